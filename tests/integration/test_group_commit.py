"""Group commit on a real SecantusDB: pushes planned at once share one database command, and each still
gets exactly its own answer (its own rows, its own claim), also when some of them lost a race."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from pushgw.clock import SystemClock
from pushgw.mongo import Document, create_client
from pushgw.push_status import StatusStore, StatusStores, UpdateBatcher
from tests.fixtures.mongo import MongoServer
from tests.fixtures.parse_data import installation
from workers.lookups import EqualityLookups

ALICE, BOB, CAROL = "_User$alice0001", "_User$bob0000001", "_User$carol00001"


class UpdateStatements(monitoring.CommandListener):
    """Per `update` command sent: how many update statements it held."""

    def __init__(self) -> None:
        self.statements: list[int] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update":
            self.statements.append(len(event.command["updates"]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_one_user_audiences_read_together_each_get_their_own_rows(
    mongo_server: MongoServer, db_name: str
) -> None:
    rows = [
        installation("ios", _id="A1", _p_user=ALICE),
        installation("android", _id="A2", _p_user=ALICE),
        installation("ios", _id="B1", _p_user=BOB),
        installation("ios", _id="X1", _p_user=[BOB, CAROL]),  # an array field matches each of its values
        installation("ios", _id="N1"),
    ]

    async def scenario() -> dict[str, list[str]]:
        client = create_client(mongo_server.uri, 5000)
        try:
            collection = client[db_name]["_Installation"]
            await collection.insert_many([dict(row) for row in rows])
            lookups = EqualityLookups(collection, "_p_user", {"deviceType": 1})
            users = [ALICE, BOB, CAROL, "_User$nobody0001", ALICE]
            found = await asyncio.gather(*(lookups.rows(user) for user in users))
            return {
                f"{n}:{user}": [row["_id"] for row in got]
                for n, (user, got) in enumerate(zip(users, found, strict=True))
            }
        finally:
            await client.close()

    assert asyncio.run(scenario()) == {
        f"0:{ALICE}": ["A1", "A2"],
        f"1:{BOB}": ["B1", "X1"],
        f"2:{CAROL}": ["X1"],
        "3:_User$nobody0001": [],
        f"4:{ALICE}": ["A1", "A2"],
    }


def test_claims_committed_together_tell_each_planner_whether_it_won(
    mongo_server: MongoServer, db_name: str
) -> None:
    """Two planners claim push P in the same bulk write (one loses), a third claims Q (wins): the bulk
    reports two matches out of three, and each claimant still learns its own result."""

    async def scenario() -> tuple[list[Any], dict[str, Any]]:
        client = create_client(mongo_server.uri, 5000)
        try:
            collection = client[db_name]["_PushStatus"]
            await collection.insert_many(
                [{"_id": "P", "status": "pending"}, {"_id": "Q", "status": "pending"}]
            )
            store = StatusStore(collection, SystemClock(), UpdateBatcher(collection, SystemClock()))
            claims = await asyncio.gather(
                store.claim_plan("P", "all", "worker-1", 60),
                store.claim_plan("P", "all", "worker-2", 60),
                store.claim_plan("Q", "all", "worker-1", 60),
            )
            owners = {doc["_id"]: doc["pushgw"]["plans"]["all"]["owner"] async for doc in collection.find()}
            return claims, owners
        finally:
            await client.close()

    claims, owners = asyncio.run(scenario())
    winner = "worker-1" if claims[0] == {} else "worker-2"
    assert sorted(claims[:2], key=repr) == [None, {}]  # exactly one of the two got P
    assert claims[2] == {}
    assert owners == {"P": winner, "Q": "worker-1"}


def test_a_unit_recorded_twice_at_once_counts_once(mongo_server: MongoServer, db_name: str) -> None:
    """Two deliveries of unit b0 and one of b1 record in the same bulk write: b0 is counted once, each
    caller learns whether its own record counted, and the push finalizes with exact counts."""

    async def scenario() -> tuple[list[bool], bool, dict[str, Any]]:
        client = create_client(mongo_server.uri, 5000)
        try:
            collection = client[db_name]["_PushStatus"]
            own = {"plans_done": 1, "plans_expected": 1, "audience": 5, "devices_done": 0}
            await collection.insert_one({"_id": "P", "status": "running", "numSent": 0, "pushgw": own})
            stores = StatusStores(SystemClock())
            store = stores.store(client[db_name], "")
            recorded = await asyncio.gather(
                store.record_unit("P", "all-b0", {"numSent": 3}, 3),
                store.record_unit("P", "all-b0", {"numSent": 3}, 3),
                store.record_unit("P", "all-b1", {"numSent": 2}, 2),
            )
            finalized = await store.try_finalize("P")
            row = await collection.find_one({"_id": "P"})
            assert row is not None
            return recorded, finalized, row
        finally:
            await client.close()

    recorded, finalized, row = asyncio.run(scenario())
    assert sorted(recorded[:2]) == [False, True] and recorded[2] is True
    assert finalized
    assert (row["status"], row["numSent"], row["pushgw"]["devices_done"]) == ("succeeded", 5, 5)


def test_identical_claims_in_one_update_many_each_learn_their_own_result(
    mongo_server: MongoServer, db_name: str
) -> None:
    """Fresh claims of three pushes build the same update, so they go out as one `update_many`; P was
    claimed by another worker before, so only Q and R match, and only their claimants win."""

    async def scenario() -> tuple[list[Any], dict[str, str]]:
        client = create_client(mongo_server.uri, 5000)
        try:
            collection = client[db_name]["_PushStatus"]
            await collection.insert_many([{"_id": name, "status": "pending"} for name in "PQR"])
            other = StatusStore(collection, SystemClock())
            assert await other.claim_plan("P", "all", "worker-0", 60) == {}
            store = StatusStores(SystemClock()).store(client[db_name], "")
            claims = await asyncio.gather(*(store.claim_plan(name, "all", "worker-1", 60) for name in "PQR"))
            owners = {doc["_id"]: doc["pushgw"]["plans"]["all"]["owner"] async for doc in collection.find()}
            return claims, owners
        finally:
            await client.close()

    claims, owners = asyncio.run(scenario())
    assert claims == [None, {}, {}]
    assert owners == {"P": "worker-0", "Q": "worker-1", "R": "worker-1"}


def test_units_of_one_push_recorded_at_once_share_one_update_and_a_recorded_one_is_not_recounted(
    mongo_server: MongoServer, db_name: str
) -> None:
    """Units b0, b1, b2 of P record at once: one update statement for all three (the database rewrites
    the push document once). Then b3, b4 and a redelivered b1 record at once: b1's condition fails the
    combined update, so each is retried alone; b3 and b4 count, b1 does not count twice. Progress reads
    asked at once share one read, and each unit's sender learns whether its own unit is recorded without
    reading every recorded unit (the map grows to 2,000 entries at a million devices)."""

    updates = UpdateStatements()
    statements = updates.statements

    async def scenario() -> tuple[list[int], list[bool], list[bool], dict[str, Any], list[Any]]:
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_server.uri, event_listeners=[updates])
        try:
            collection = client[db_name]["_PushStatus"]
            own = {"plans_done": 1, "plans_expected": 1, "audience": 15, "devices_done": 0}
            await collection.insert_one({"_id": "P", "status": "running", "numSent": 0, "pushgw": own})
            store = StatusStores(SystemClock()).store(client[db_name], "")

            async def record_all(units: list[str]) -> list[bool]:
                return await asyncio.gather(
                    *(store.record_unit("P", unit, {"numSent": 3}, 3) for unit in units)
                )

            first = await record_all(["all-b0", "all-b1", "all-b2"])
            first_statements = list(statements)
            second = await record_all(["all-b3", "all-b1", "all-b4"])
            row = await collection.find_one({"_id": "P"})
            assert row is not None
            asked = ["all-b1", "all-b7", None]
            reads = await asyncio.gather(*(store.progress("P", unit) for unit in asked))
            return first_statements, first, second, row, reads

        finally:
            await client.close()

    first_statements, first, second, row, reads = asyncio.run(scenario())
    assert first_statements == [1]
    assert first == [True, True, True]
    assert second == [True, False, True]
    assert (row["numSent"], row["pushgw"]["devices_done"]) == (15, 15)
    assert sorted(row["pushgw"]["units"]) == [f"all-b{n}" for n in range(5)]
    assert all(read["pushgw"]["devices_done"] == 15 and read["status"] == "running" for read in reads)
    assert [sorted(read["pushgw"].get("units", {})) for read in reads] == [["all-b1"]] * 3  # one read for all


def test_pushes_sent_before_claimed_finish_in_one_write_and_never_over_a_claim_or_a_cancel(
    mongo_server: MongoServer, db_name: str
) -> None:
    """Four one-device pushes sent before being claimed finish at once: P, Q (pending) succeed in the same
    single `update_many`, with their counts; R was claimed by another worker meanwhile and S cancelled, so
    both are left as they are and their senders learn it (they then claim, or stop)."""

    updates = UpdateStatements()
    statements = updates.statements

    async def scenario() -> tuple[list[bool], dict[str, Any]]:
        client: AsyncMongoClient[Document] = AsyncMongoClient(mongo_server.uri, event_listeners=[updates])
        try:
            collection = client[db_name]["_PushStatus"]
            await collection.insert_many([{"_id": name, "status": "pending", "numSent": 0} for name in "PQR"])
            await collection.insert_one({"_id": "S", "status": "failed", "numSent": 0})
            assert await StatusStore(collection, SystemClock()).claim_plan("R", "all", "worker-0", 60) == {}
            statements.clear()
            store = StatusStores(SystemClock()).store(client[db_name], "")
            finished = await asyncio.gather(
                *(store.finish_unclaimed(name, "all", "worker-1", {"numSent": 1}, 1) for name in "PQRS")
            )
            return finished, {doc["_id"]: doc async for doc in collection.find()}
        finally:
            await client.close()

    finished, rows = asyncio.run(scenario())
    assert finished == [True, True, False, False]
    assert statements == [1]  # one update_many for P, Q, R and S (then one read-back of who matched)
    for name in "PQ":
        assert (rows[name]["status"], rows[name]["numSent"]) == ("succeeded", 1)
        assert rows[name]["pushgw"]["plans"]["all"]["done"] is True
        assert rows[name]["pushgw"]["devices_done"] == rows[name]["pushgw"]["audience"] == 1
    assert (rows["R"]["status"], rows["R"]["numSent"]) == ("running", 0)
    assert rows["R"]["pushgw"]["plans"]["all"]["owner"] == "worker-0"
    assert (rows["S"]["status"], rows["S"]["numSent"]) == ("failed", 0)
