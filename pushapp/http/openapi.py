"""Routes declared once, with what they take and answer; the OpenAPI 3.1 document is made
from those declarations and the pydantic models that validate, never written by hand.

``CATALOG.route`` registers a Flask view on a blueprint and records it. A route marked
``public`` needs no API key (health checks, metrics, the document itself); the others
declare the bearer scheme: one of ``API_KEYS``.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable

from flask import Blueprint
from pydantic import TypeAdapter
from pydantic.json_schema import models_json_schema

from .schemas import IDEMPOTENCY_KEY, RequestModels

TEXT = "text/plain"
_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")
_STATUS = {
    200: "Done",
    400: "The body is not JSON, or a header is malformed",
    401: "No key, or a wrong one: one of API_KEYS (/metrics: METRICS_TOKEN)",
    409: "A request with this Idempotency-Key is still in flight: retry later",
    413: "The body is larger than API_MAX_BODY_BYTES",
    422: "A field is invalid; errors names each",
    429: "Too many wrong API keys from this address: retry after Retry-After seconds",
    503: "Redis failed, nothing was done (a batch: see done); retry",
}


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str
    endpoint: str
    summary: str
    description: str
    body: str | None
    answers: dict[int, Any]
    query: dict[str, TypeAdapter]
    idempotent: bool
    public: bool


class Catalog:
    """Every declared route."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def route(self, bp: Blueprint, method: str, rule: str, *, answers: dict[int, Any],
              body: str | None = None, query: dict[str, TypeAdapter] | None = None,
              idempotent: bool = False, public: bool = False) -> Callable:
        """Register the view on ``bp``. ``answers`` maps a status to the pydantic model of
        its JSON body, or to the media type of a body described in the docstring; ``body``
        names a ``RequestModels`` field; ``query`` maps parameter names to their types."""

        def register(view: Callable) -> Callable:
            summary, _, description = inspect.cleandoc(view.__doc__ or "").partition("\n")
            self.operations.append(Operation(
                method, _PARAM.sub(r"{\1}", (bp.url_prefix or "") + rule),
                f"{bp.name}.{view.__name__}", summary, description.strip(), body, answers,
                query or {}, idempotent, public))
            bp.add_url_rule(rule, view_func=view, methods=[method], merge_slashes=False)
            return view

        return register

    def is_public(self, endpoint: str | None) -> bool:
        return any(op.endpoint == endpoint and op.public for op in self.operations)

    def document(self, models: RequestModels, title: str, version: str) -> dict:
        """The OpenAPI document, with this gateway's limits in its schemas."""
        pairs = [(getattr(models, op.body), "validation") for op in self.operations if op.body]
        pairs += [(answer, "serialization") for op in self.operations
                  for answer in op.answers.values() if not isinstance(answer, str)]
        refs, defs = models_json_schema(list(dict.fromkeys(pairs)),
                                        ref_template="#/components/schemas/{model}")
        paths: dict[str, dict] = {}
        for op in self.operations:
            item: dict[str, Any] = {
                "operationId": op.endpoint.replace(".", "_"),
                "summary": op.summary,
                "description": op.description,
                "parameters": _parameters(op, models),
                "responses": {str(status): _answer(status, answer, refs)
                              for status, answer in op.answers.items()},
                "security": [] if op.public else [{"bearerAuth": []}],
            }
            if op.body:
                item["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": refs[(getattr(models, op.body), "validation")]}}}
            paths.setdefault(op.path, {})[op.method.lower()] = item
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version,
                     "description": "pushapp's HTTP API: publish chats and notifications as "
                                    "on the Redis channels, look at users, and operate."},
            "paths": paths,
            "components": {
                "schemas": defs.get("$defs", {}),
                "securitySchemes": {"bearerAuth": {
                    "type": "http", "scheme": "bearer",
                    "description": "Authorization: Bearer <key>, one of API_KEYS"}},
            },
        }


def _parameters(op: Operation, models: RequestModels) -> list[dict]:
    found = [{"name": name, "in": "path", "required": True,
              "schema": models.path_user.json_schema()}
             for name in re.findall(r"{(\w+)}", op.path)]
    found += [{"name": name, "in": "query", "required": False, "schema": kind.json_schema()}
              for name, kind in op.query.items()]
    if op.idempotent:
        found.append({"name": "Idempotency-Key", "in": "header", "required": False,
                      "schema": IDEMPOTENCY_KEY.json_schema()})
    return found


def _answer(status: int, answer: Any, refs: dict) -> dict:
    if isinstance(answer, str):
        content = {answer: {"schema": {"type": "string" if answer == TEXT else "object"}}}
    else:
        content = {"application/json": {"schema": refs[(answer, "serialization")]}}
    return {"description": _STATUS.get(status, ""), "content": content}


CATALOG = Catalog()
