from rstar.cli import main

main()
