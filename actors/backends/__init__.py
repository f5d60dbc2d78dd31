"""Generation backends behind one interface (``base.Backend``); ``setup_backend`` picks one by config."""
