"""An equality on ``true`` matches ``true`` only, never ``1`` (MongoDB compares BSON types: a boolean is not a
number), on every path of the embedded server: plain, under ``$and``, beside an ``$or`` (mongomock's matcher
judges that part, and equates ``true`` with ``1``), with and without an index. Found by the demand of a cluster
with an ``fworker_query`` counting ``spec._pilot.continues: 1`` as a chain head."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("indexed", [False, True])
def test_true_is_not_one(db, indexed):
    coll = db["fws"]
    coll.insert_many([{"_id": 1, "s": "R", "k": True, "x": "a"}, {"_id": 2, "s": "R", "k": 1, "x": "a"},
                      {"_id": 3, "s": "R", "k": 1.0, "x": "a"}, {"_id": 4, "s": "R", "k": False, "x": "a"},
                      {"_id": 5, "s": "R", "k": 0, "x": "a"}])
    if indexed:
        for f in ("s", "k", "x"):
            coll.create_index(f)
    for flt in ({"k": True}, {"s": "R", "k": True}, {"s": "R", "$and": [{"x": "a"}], "k": True},
                {"$and": [{"s": "R"}, {"k": True}]}, {"k": {"$in": [True]}}, {"s": "R", "k": {"$in": [True]}},
                {"$or": [{"x": "a"}, {"x": "b"}], "k": True}, {"$and": [{"$or": [{"x": "a"}]}, {"k": True}]}):
        assert sorted(d["_id"] for d in coll.find(flt)) == [1], flt
        assert coll.count_documents(flt) == 1, flt
    for flt in ({"k": 1}, {"s": "R", "$and": [{"x": "a"}], "k": 1}, {"k": {"$in": [1]}}):
        assert sorted(d["_id"] for d in coll.find(flt)) == [2, 3], flt
    for flt in ({"k": False}, {"s": "R", "$and": [{"x": "a"}], "k": False}):
        assert sorted(d["_id"] for d in coll.find(flt)) == [4], flt
