"""OpenAPI 3.0 document of the recommender API, built in code from the live limits."""

from __future__ import annotations

from ranking.features import FEATURES, SOURCES
from recommender_server.config import ApiConfig
from recommender_server.filters import MAX_FILTERS, MAX_VALUE_LEN
from recommender_server.ranking import ORDERS
from recommender_server.recommend import SIMILAR_SOURCES

REASONS = ["unknown_user", "no_vector", "mongo_unavailable", "faiss_unavailable",
           "index_not_ready", "bad_query", "no_candidates", "unknown_item", "redis_unavailable"]


def _json(ref: str, description: str) -> dict[str, object]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def openapi_document(config: ApiConfig) -> dict[str, object]:
    k = {"name": "k", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": config.max_k, "default": 10}}
    bad = _json("Error", "Invalid parameter")
    nullable_str = {"type": "string", "nullable": True}
    # free-form query parameters (OpenAPI 3.0: one object parameter, form style, exploded)
    filters = {
        "name": "filters", "in": "query", "required": False, "style": "form",
        "explode": True,
        "description": "Attribute filters: every parameter not named here. `name=value`: "
                       "the item attribute equals the value or, for a list, holds it; a "
                       "singular name reads the plural list (`genre=Comedy` matches "
                       "`genres: [\"Comedy\"]`); a repeated name accepts any of its "
                       "values. `name_min=n`, `name_max=n`: a numeric attribute within "
                       "the bound (inclusive). Names must all hold; an item without "
                       f"metadata never passes. At most {MAX_FILTERS} parameters, values of "
                       f"at most {MAX_VALUE_LEN} characters. Example: "
                       "`genre=Comedy&year_min=1990&year_max=1999`.",
        "schema": {"type": "object", "additionalProperties": {"type": "string"}}}
    filtered = {
        "filters": {"type": "object", "description": "The filter applied (only when one "
                                                     "was asked)"},
        "partial": {"type": "boolean", "description": "Fewer than `k` items passed the "
                                                      "filter (only when one was asked): "
                                                      "the answer is not padded"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Recommender API", "version": "1.0.0",
                 "description": "Personalised, similar and popular items. Never a 5xx for an "
                                "unknown user or a down dependency: the answer falls back to "
                                "popular items and says why."},
        "paths": {
            "/v1/recommendations": {"get": {
                "operationId": "recommendations",
                "summary": "Top-k items for a user (popular items as fallback)",
                "parameters": [{"name": "user_id", "in": "query", "required": True,
                                "schema": {"type": "string", "minLength": 1,
                                           "maxLength": 256}}, k,
                               {"name": "explain", "in": "query", "required": False,
                                "description": "Each ranked item also carries its ranking "
                                               "features and the ranker's score",
                                "schema": {"type": "boolean", "default": False}},
                               {"name": "order", "in": "query", "required": False,
                                "description": "`ranked`: the learned ranker over every "
                                               "source's candidates (the FAISS order until "
                                               "a ranker is published); `retrieval`: the "
                                               "FAISS order; a source name: that source's "
                                               "own candidates in its own order (for "
                                               "comparison)",
                                "schema": {"type": "string", "enum": list(ORDERS),
                                           "default": "ranked"}}, filters],
                "responses": {"200": _json("Recommendations", "Items"), "400": bad}}},
            "/v1/items/{item_id}/similar": {"get": {
                "operationId": "similarItems", "summary": "Items similar to an item",
                "parameters": [{"name": "item_id", "in": "path", "required": True,
                                "schema": {"type": "string", "minLength": 1,
                                           "maxLength": 256}}, k,
                               {"name": "source", "in": "query", "required": False,
                                "description": "`embedding`: nearest item vectors (FAISS); "
                                               "`cooc`: items most often clicked around it "
                                               "(co-occurrence counted by the stream)",
                                "schema": {"type": "string", "enum": list(SIMILAR_SOURCES),
                                           "default": "embedding"}}, filters],
                "responses": {"200": _json("Similar", "Items (popular with `unknown_item` "
                                                      "if the source does not know the "
                                                      "item)"),
                              "400": bad}}},
            "/v1/popular": {"get": {
                "operationId": "popular", "summary": "Most popular available items",
                "parameters": [k, filters],
                "responses": {"200": _json("Popular", "Items"), "400": bad,
                              "503": _json("Error", "Redis not answering")}}},
            "/health": {"get": {"operationId": "health", "summary": "Liveness",
                                "responses": {"200": {"description": "Alive"}}}},
            "/ready": {"get": {"operationId": "ready",
                               "summary": "Dependencies answering (503 with details if not)",
                               "responses": {"200": {"description": "Ready"},
                                             "503": {"description": "Not ready"}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3"}}}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["title", "code"], "properties": {
                "title": {"type": "string"}, "description": {"type": "string"},
                "code": {"type": "string"}}},
            "Item": {"type": "object", "required": ["id", "score", "source"], "properties": {
                "id": {"type": "string"}, "score": {"type": "number"},
                "source": {"type": "string", "enum": ["personalized", "similar", "popular"]},
                "metadata": {"type": "object", "nullable": True},
                "sources": {"type": "array", "items": {"type": "string", "enum": [
                    *SOURCES, "popular"]},
                    "description": "Recommendations: the candidate sources that proposed "
                                   "the item (`popular` for a popular fill)"},
                "features": {"type": "object", "description": "With `explain=true`: the "
                             "ranking features (unknown ones left out): "
                             + ", ".join(f"`{f}`" for f in FEATURES),
                             "additionalProperties": {"type": "number"}},
                "ranker_score": {"type": "number", "nullable": True,
                                 "description": "With `explain=true`: the ranker's score "
                                                "(null: no ranker, the FAISS order)"}}},
            "Recommendations": {"type": "object",
                                "required": ["user_id", "source", "items", "fallback_reason"],
                                "properties": {
                "user_id": {"type": "string"}, "k": {"type": "integer"},
                "source": {"type": "string", "enum": ["personalized", "popular"]},
                "fallback_reason": {"type": "string", "nullable": True, "enum": REASONS},
                "model_version": nullable_str, "index_version": nullable_str,
                "ranker_version": {**nullable_str, "description": "The ranker that ordered "
                                   "the list (null: none published yet, the FAISS order)"},
                "degraded": {"type": "array", "items": {"type": "string"}}, **filtered,
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}}},
            "Similar": {"type": "object", "required": ["item_id", "source", "items"],
                        "properties": {
                "item_id": {"type": "string"}, "k": {"type": "integer"},
                "source": {"type": "string", "enum": ["similar", "popular"]},
                "similar_source": {"type": "string", "enum": list(SIMILAR_SOURCES)},
                "fallback_reason": {"type": "string", "nullable": True, "enum": REASONS},
                "index_version": nullable_str,
                "degraded": {"type": "array", "items": {"type": "string"}}, **filtered,
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}}},
            "Popular": {"type": "object", "required": ["source", "items"], "properties": {
                "k": {"type": "integer"}, "source": {"type": "string"},
                "degraded": {"type": "array", "items": {"type": "string"}}, **filtered,
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}}},
        }},
    }
