"""Collections and indexes: create, drop, dropDatabase, createIndexes, dropIndexes, renameCollection."""

from __future__ import annotations

from pilot.launchpad.commands import Command, CommandBase, CommandError, Reply, Sequences


class SchemaCommands(CommandBase):
    """The commands that create, rename and drop collections and indexes."""

    # ---------------------------------------------------------------------- collections, indexes
    def _create(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        cname = cmd[name]
        self.coll(db, cname)
        extra = {k for k, v in cmd.items() if k != name and v}
        if extra:
            raise CommandError(f"create with options {sorted(extra)} is not supported by the embedded server",
                               115)
        if self.cstore(db, cname).is_created:
            raise CommandError(f"Collection {db}.{cname} already exists.", 48)
        self.client[db].create_collection(cname)
        return {"ok": 1.0}

    def _drop(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        cname = cmd[name]
        cs = self.cstore(db, cname)
        if not cs.is_created:
            raise CommandError("ns not found", 26)
        nidx = len(cs.indexes) + 1
        cs.drop()
        self._colls.pop((db, cname), None)
        return {"ns": f"{db}.{cname}", "nIndexesWas": nidx, "ok": 1.0}

    def _dropdatabase(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        for cs in self.store[db].collection_stores():
            cs.drop()
        return {"dropped": db, "ok": 1.0}

    def _createindexes(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        cname = cmd[name]
        coll = self.coll(db, cname)
        cs = self.cstore(db, cname)
        created_coll = not cs.is_created
        before = len(cs.indexes) + 1
        for spec in cmd.get("indexes") or []:
            key = spec.get("key")
            if not isinstance(key, dict) or not key:
                raise CommandError(f"index spec without a key: {spec}", 67)
            unknown = set(spec) - {"key", "name", "unique", "sparse", "background", "expireAfterSeconds",
                                   "partialFilterExpression", "v"}
            if unknown:
                raise CommandError(f"index options {sorted(unknown)} are not supported by the embedded server",
                                   115)
            kw = {k: spec[k] for k in ("name", "unique", "sparse", "expireAfterSeconds", "partialFilterExpression")
                  if k in spec}
            existing = cs.indexes.get(spec.get("name", ""))
            if existing is not None and [tuple(x) for x in existing["key"]] == list(key.items()):
                continue  # same name and key: MongoDB treats this as a no-op
            coll.create_index(list(key.items()), **kw)
        if created_coll and not cs.is_created:
            cs.create()
        return {"numIndexesBefore": before, "numIndexesAfter": len(cs.indexes) + 1,
                "createdCollectionAutomatically": created_coll, "ok": 1.0}

    def _dropindexes(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        cname = cmd[name]
        cs = self.cstore(db, cname)
        if not cs.is_created:
            raise CommandError(f"ns not found {db}.{cname}", 26)
        before = len(cs.indexes) + 1
        idx = cmd.get("index")
        names = idx if isinstance(idx, list) else [idx]
        for one in names:
            if one == "*":
                cs.indexes = {}
                continue
            if isinstance(one, dict):
                match = [n for n, s in cs.indexes.items() if [tuple(x) for x in s["key"]] == list(one.items())]
                if not match:
                    raise CommandError(f"can't find index with key: {one}", 27)
                one = match[0]
            if one == "_id_":
                raise CommandError("cannot drop _id index", 72)
            if one not in cs.indexes:
                raise CommandError(f"index not found with name [{one}]", 27)
            cs.drop_index(one)
        return {"nIndexesWas": before, "ok": 1.0}

    def _renamecollection(self, db: str, name: str, cmd: Command, seqs: Sequences, conn: int) -> Reply:
        src, dst = str(cmd[name]), str(cmd.get("to") or "")
        sdb, _, sc = src.partition(".")
        ddb, _, dc = dst.partition(".")
        if sdb != ddb:
            raise CommandError("renaming a collection across databases is not supported by the embedded server",
                               115)
        self.coll(sdb, sc)
        self.coll(ddb, dc)
        self.client[sdb].rename_collection(sc, dc, dropTarget=bool(cmd.get("dropTarget")))
        self._colls.pop((sdb, sc), None)
        self._colls.pop((ddb, dc), None)
        return {"ok": 1.0}
