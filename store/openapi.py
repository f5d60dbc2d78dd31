"""The OpenAPI 3.1 document of the store API, served at ``/openapi.json``.

Written out by hand next to the handlers in ``store/api.py``; ``tests/integration/test_api.py``
checks that every route the app registers is described here and that nothing here is missing
from the app, so the two cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

from rstar.problems import MAX_ANSWER_CHARS, MAX_META_BYTES, MAX_QUESTION_CHARS, MAX_SOURCE_CHARS

# What ``POST /api/problems`` accepts; ``store/api.py`` enforces these (a problem's own limits are
# the kernel's, ``rstar.problems.problem_limit_error``), this document states them.
MAX_PROBLEMS_PER_POST = 10_000
MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_SOURCE = "api"
_INT32 = 2**31 - 1
_NO_NUL = "^[^\\u0000]*$"

_ERROR = {"$ref": "#/components/responses/Error"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_NAME = {"type": "string", "maxLength": 256, "pattern": _NO_NUL}  # ids as query and path parameters
_ROUND = {"type": "integer", "minimum": -_INT32, "maximum": _INT32}  # the database's 32-bit integers


def _path_id(description: str) -> dict[str, Any]:
    schema = {**_NAME, "minLength": 1}
    return {"name": "id", "in": "path", "required": True, "schema": schema, "description": description}


_OBJ = {"type": "object", "additionalProperties": True}
_ITEMS = lambda ref: {"type": "object", "properties": {"items": {"type": "array", "items": ref}}}  # noqa: E731

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "param": {"type": "string"}},
    },
    "Stats": {
        "type": "object",
        "properties": {
            **{
                k: {"type": "integer"}
                for k in ("problems", "problems_searched", "trees", "solved_trees", "solved_problems", "nodes")
            },
            "by_round": {"type": "array", "items": _OBJ},
            "by_policy_version": {"type": "array", "items": _OBJ},
        },
    },
    "Tree": {
        "type": "object",
        "description": "A trees row plus its problem's question.",
        "properties": {
            "id": {"type": "string"},
            "problem_id": {"type": "string"},
            "actor_id": {"type": "string"},
            "policy_version": {"type": "string"},
            "ppm_version": {"type": "string"},
            "round": {"type": "integer"},
            "source": {"type": "string", "enum": ["search", "teacher"]},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": "string", "format": "date-time"},
            "solved": {"type": "boolean"},
            "best_answer": {"type": ["string", "null"]},
            "rollouts": {"type": "integer"},
            "n_nodes": {"type": "integer"},
            "max_depth": {"type": "integer"},
            "question": {"type": "string"},
            "level": {"description": "the problem's meta.level (any JSON value), null without one"},
            "gold": {"type": ["string", "null"], "description": "the problem's answer (one tree only)"},
            "sft": {
                "type": "array",
                "description": "trajectories SFT took from it, {round, leaf_idx, avg_q} (one tree only)",
                "items": _OBJ,
            },
            "ppm_pairs": {
                "type": "array",
                "description": "PPM preference pairs from it, {round, pos_idx, neg_idx, kind} (one tree only)",
                "items": _OBJ,
            },
        },
    },
    "Node": {
        "type": "object",
        "properties": {
            "idx": {"type": "integer"},
            "parent_idx": {"type": ["integer", "null"]},
            "depth": {"type": "integer"},
            "path": {"type": "string", "description": "ancestor idx chain, root first: 0.3.7"},
            "text": {"type": "string"},
            "code_output": {"type": "string"},
            "q": {"type": "number"},
            "visits": {"type": "integer"},
            "ppm_score": {"type": ["number", "null"]},
            "terminal": {"type": "boolean"},
            "correct": {"type": ["boolean", "null"]},
            "answer": {"type": ["string", "null"]},
            "policy_version": {"type": "string"},
            "ppm_version": {"type": "string"},
            "gen_tokens": {"type": "integer"},
        },
    },
    "Problem": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "source": {"type": "string"},
            "question": {"type": "string"},
            "answer": {"type": ["string", "null"]},
            "meta": _OBJ,
            "created_at": {"type": "string", "format": "date-time"},
            "trees": {"type": "integer"},
            "solved_trees": {"type": "integer"},
        },
    },
    "NewProblem": {
        "type": "object",
        "description": (
            "A problem to add; its id is computed from source and question. "
            'Example: {"question": "What is 2 + 3?", "answer": "5"}.'
        ),
        "required": ["question"],
        "additionalProperties": False,
        "properties": {
            "question": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_QUESTION_CHARS,
                "pattern": "\\S",
                "description": "not only whitespace (NUL is stored as U+FFFD)",
            },
            "source": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_SOURCE_CHARS,
                "pattern": _NO_NUL,
                "default": DEFAULT_SOURCE,
                "description": "where the problem comes from; the id is source-<hash>",
            },
            "answer": {
                "type": ["string", "number", "null"],
                "maxLength": MAX_ANSWER_CHARS,
                "description": "the reference answer; a number is stored as text (43.0 as 43)",
            },
            "meta": {
                "type": "object",
                "additionalProperties": True,
                "default": {},
                "description": f"any JSON object, at most {MAX_META_BYTES:,} bytes as JSON, no NUL character in it",
            },
        },
    },
    "Round": {
        "type": "object",
        "properties": {
            "round": {"type": "integer"},
            "state": {"type": "string"},
            "started_at": {"type": "string", "format": "date-time"},
            "closed_at": {"type": ["string", "null"], "format": "date-time"},
            "quota": {"type": "integer"},
            "eval": _OBJ,
            "policy_version": {"type": ["string", "null"]},
            "ppm_version": {"type": ["string", "null"]},
        },
    },
    "Checkpoint": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "round": {"type": "integer"},
            "kind": {"type": "string", "enum": ["policy", "ppm"]},
            "version": {"type": "string"},
            "object": {"type": "string"},
            "sha256": {"type": "string"},
            "metrics": _OBJ,
            "parent_id": {"type": ["integer", "null"]},
            "base": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
}


def openapi_spec(max_limit: int) -> dict[str, Any]:
    """The document; ``max_limit`` is the largest page size ``/api/trees`` accepts."""
    page = [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": max_limit, "default": 50}, "page size"),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": _INT32, "default": 0}, "rows to skip"),
    ]
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Liveness and database reachability",
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"status": {"type": "string"}, "revision": {"type": "string"}}}
                    ),
                    "503": _ERROR,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }
        },
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json(_OBJ)}}},
        "/": {
            "get": {
                "summary": "The web tree explorer",
                "responses": {"200": {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
        "/api/stats": {
            "get": {
                "summary": "Store totals, per round and per policy version",
                "responses": {"200": _json(_ref("Stats"))},
            }
        },
        "/api/trees": {
            "get": {
                "summary": "Trees, newest first, filtered and paginated",
                "parameters": [
                    _query("round", _ROUND, "only this round"),
                    _query(
                        "solved", {"type": "boolean"}, "only solved (true) or unsolved (false) trees; 1/0, yes/no too"
                    ),
                    _query("problem", _NAME, "only trees of this problem id"),
                    _query("source", {"type": "string", "enum": ["search", "teacher"]}, "only this source"),
                    _query("level", _NAME, 'only trees whose problem\'s meta.level reads so (3 matches 3 and "3")'),
                    *page,
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "total": {"type": "integer"},
                                "limit": {"type": "integer"},
                                "offset": {"type": "integer"},
                                "items": {"type": "array", "items": _ref("Tree")},
                            },
                        }
                    ),
                    "400": _ERROR,
                },
            }
        },
        "/api/trees/{id}": {
            "get": {
                "summary": "One tree with all its nodes",
                "parameters": [_path_id("tree id")],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"tree": _ref("Tree"), "nodes": {"type": "array", "items": _ref("Node")}},
                        }
                    ),
                    "404": _ERROR,
                },
            }
        },
        "/api/problems/{id}": {
            "get": {
                "summary": "One problem with its tree counts",
                "parameters": [_path_id("problem id")],
                "responses": {"200": _json(_ref("Problem")), "404": _ERROR},
            }
        },
        "/api/problems": {
            "post": {
                "summary": "Add problems (ids computed from source + question); needs the API token",
                "description": (
                    f"A JSON list of 1 to {MAX_PROBLEMS_PER_POST:,} problems, at most {MAX_BODY_BYTES:,} bytes "
                    "(413 beyond). All or nothing: one refused problem (400, param body[i]) refuses the request "
                    "and nothing of it is stored. A body that is not JSON is told so; JSON of the wrong shape "
                    "is told which field. Problems already stored (same id) are kept as they are."
                ),
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "array",
                                "items": _ref("NewProblem"),
                                "minItems": 1,
                                "maxItems": MAX_PROBLEMS_PER_POST,
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "received": {"type": "integer"},
                                "new": {"type": "integer"},
                                "ids": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    ),
                    "400": _ERROR,
                    "401": _ERROR,
                    "403": _ERROR,
                    "408": _ERROR,
                    "413": _ERROR,
                    "502": _ERROR,
                },
            }
        },
        "/api/rounds": {"get": {"summary": "Rounds, oldest first", "responses": {"200": _json(_ITEMS(_ref("Round")))}}},
        "/api/checkpoints": {
            "get": {
                "summary": "Checkpoints, oldest first",
                "parameters": [
                    _query("kind", {"type": "string", "enum": ["policy", "ppm"]}, "only this kind"),
                    _query("round", _ROUND, "only this round"),
                ],
                "responses": {"200": _json(_ITEMS(_ref("Checkpoint"))), "400": _ERROR},
            }
        },
    }
    for ops in paths.values():  # every route reads the database, which may be down or restarting
        for path_op in ops.values():
            path_op["responses"].setdefault("503", _ERROR)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rstar store API",
            "version": "1",
            "description": "Search trees, problems, rounds and checkpoints of an rstar store.",
        },
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "responses": {"Error": _json(_ref("Error"), "Error (JSON body says what was wrong)")},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
