"""OpenAPI 3.0 document of the FAISS service, built in code from the live limits."""

from __future__ import annotations

from typing import Any

from faiss_server.config import FaissConfig


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(schema_ref: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}


def openapi_document(config: FaissConfig) -> dict[str, Any]:
    dim, max_k = config.spec.dim, config.max_k
    item_id = {"name": "item_id", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 256}}
    k_param = {"name": "k", "in": "query", "required": False,
               "schema": {"type": "integer", "minimum": 1, "maximum": max_k, "default": 10}}
    vector = {"type": "array", "items": {"type": "number"}, "minItems": dim, "maxItems": dim}
    secured: list[dict[str, list[str]]] = [{"ApiKey": []}]
    common_errors = {"400": _error("Invalid input (dimension, NaN, k out of range, ...)"),
                     "503": _error("No index version loaded yet")}
    auth_errors = {"401": _error("Missing or wrong X-API-Key")}
    return {
        "openapi": "3.0.3",
        "info": {"title": "FAISS item index service", "version": "1.0.0",
                 "description": "Inner-product ANN search over item vectors keyed by string "
                                f"item id. Index kind: {config.spec.kind}, dimension {dim}."},
        "paths": {
            "/v1/search": {"post": {
                "summary": "Top-k items for one or many query vectors",
                "operationId": "search",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SearchRequest"}}}},
                "responses": {"200": _ok("SearchResponse"), **common_errors,
                              "413": _error("Body too large")},
            }},
            "/v1/items/{item_id}/similar": {"get": {
                "summary": "Items nearest to an indexed item (never the item itself)",
                "operationId": "similar",
                "parameters": [item_id, k_param, {
                    "name": "exclude", "in": "query", "required": False,
                    "style": "form", "explode": False,
                    "schema": {"type": "array", "items": {"type": "string"}}}],
                "responses": {"200": _ok("SimilarResponse"), **common_errors,
                              "404": _error("Unknown item")},
            }},
            "/v1/items/{item_id}": {
                "get": {"summary": "The stored vector of an item", "operationId": "getItem",
                        "parameters": [item_id],
                        "responses": {"200": _ok("ItemVector"), **common_errors,
                                      "404": _error("Unknown item")}},
                "put": {"summary": "Insert or replace one item's vector",
                        "operationId": "upsertItem", "security": secured,
                        "parameters": [item_id],
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"type": "object", "required": ["vector"],
                                       "properties": {"vector": vector}}}}},
                        "responses": {"200": _ok("WriteResponse"), **common_errors,
                                      **auth_errors, "413": _error("Body too large")}},
                "delete": {"summary": "Remove one item", "operationId": "deleteItem",
                           "security": secured, "parameters": [item_id],
                           "responses": {"200": _ok("WriteResponse"), **common_errors,
                                         **auth_errors, "404": _error("Unknown item")}},
            },
            "/v1/index": {"get": {
                "summary": "Current version, size and parameters", "operationId": "indexInfo",
                "responses": {"200": _ok("IndexInfo")}}},
            "/v1/index/versions": {"post": {
                "summary": "Load a complete new version and swap it in atomically",
                "description": "JSON `{version, path}` reads an `.npz` (arrays `ids`, "
                               "`vectors`) under the service's allowed folders; an "
                               "`application/octet-stream` body is such an `.npz` uploaded, "
                               "with `?version=`. Searches in flight finish on the old index.",
                "operationId": "loadVersion", "security": secured,
                "parameters": [{"name": "version", "in": "query", "required": False,
                                "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["version", "path"],
                        "properties": {"version": {"type": "string"},
                                       "path": {"type": "string"}}}},
                    "application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}}}},
                "responses": {"201": _ok("IndexInfo", "Loaded and swapped in"),
                              "400": _error("Bad version name or file"), **auth_errors,
                              "404": _error("No such file"), "413": _error("Upload too large")},
            }},
            "/v1/index/snapshot": {"post": {
                "summary": "Save the current index (with single-item writes) to disk",
                "operationId": "snapshot", "security": secured,
                "responses": {"200": _ok("IndexInfo"), **auth_errors,
                              "503": _error("No index version loaded yet")}}},
            "/health": {"get": {"summary": "Liveness; 503 until an index is loaded",
                                "operationId": "health",
                                "responses": {"200": _ok("Health"), "503": _ok("Health")}}},
            "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                      "responses": {"200": {"description": "OpenAPI 3"}}}},
        },
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header",
                                           "name": "X-API-Key"}},
            "schemas": {
                "Error": {"type": "object", "required": ["title", "code"], "properties": {
                    "title": {"type": "string"}, "description": {"type": "string"},
                    "code": {"type": "string", "description": "stable error code "
                             "(clients match on it, not on the title)"}}},
                "Hit": {"type": "object", "required": ["id", "score"], "properties": {
                    "id": {"type": "string"}, "score": {"type": "number"}}},
                "SearchRequest": {"type": "object", "required": ["vectors"], "properties": {
                    "vectors": {"type": "array", "items": vector, "minItems": 1,
                                "maxItems": config.max_batch},
                    "k": {"type": "integer", "minimum": 1, "maximum": max_k, "default": 10},
                    "exclude": {"type": "array", "items": {"type": "string"},
                                "maxItems": config.max_exclude},
                    "boosts": {"type": "array", "maxItems": config.max_batch,
                               "description": "optional, one object per query vector "
                               "({} for none): {item id: value >= 0} added to that "
                               "item's inner product (dense + sparse query); the "
                               "answer is the top k of the sum over the dense top k "
                               "and every boosted item",
                               "items": {"type": "object", "maxProperties":
                                         config.max_boosts, "additionalProperties":
                                         {"type": "number", "minimum": 0}}},
                    "only": {"type": "array", "items": {"type": "string"},
                             "maxItems": config.max_only,
                             "description": "optional: search within these ids alone, "
                             "each scored exactly (a filter resolved to ids; unknown "
                             "ids are skipped)"}}},
                "SearchResponse": {"type": "object", "required": ["version", "results"],
                                   "properties": {
                    "version": {"type": "string"}, "k": {"type": "integer"},
                    "results": {"type": "array", "items": {
                        "type": "array", "items": {"$ref": "#/components/schemas/Hit"}}}}},
                "SimilarResponse": {"type": "object", "required": ["version", "results"],
                                    "properties": {
                    "version": {"type": "string"}, "item_id": {"type": "string"},
                    "results": {"type": "array",
                                "items": {"$ref": "#/components/schemas/Hit"}}}},
                "ItemVector": {"type": "object", "properties": {
                    "id": {"type": "string"}, "version": {"type": "string"},
                    "vector": {"type": "array", "items": {"type": "number"}}}},
                "WriteResponse": {"type": "object", "properties": {
                    "id": {"type": "string"}, "version": {"type": "string"},
                    "size": {"type": "integer"}, "deleted": {"type": "boolean"}}},
                "IndexInfo": {"type": "object", "properties": {
                    "version": {"type": "string", "nullable": True},
                    "size": {"type": "integer"}, "dim": {"type": "integer"},
                    "kind": {"type": "string"}, "params": {"type": "object"}}},
                "Health": {"type": "object", "properties": {
                    "status": {"type": "string"}, "version": {"type": "string",
                                                              "nullable": True},
                    "size": {"type": "integer"}}},
            },
        },
    }
