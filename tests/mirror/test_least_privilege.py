"""Issue #13, "ArangoDB with a least-privilege user": the mirror needs rw on its own database only."""
import pytest

from mirror import arango
from mirror import status as mirror_status
from mirror.arango import MirrorMisconfigured
from mirror.models import MirrorOutbox
from mirror.sync import mirror_drain
from ops import health
from jobs.submission import queue_create
from tests.queues.factories import make_queue
from tests.emulators.contract import grant_user

from .helpers import assert_mirror_matches_postgres

pytestmark = pytest.mark.django_db


def test_it_mirrors_with_rights_on_its_own_database_only(mirror, historical_payload):
    """Case: a user with rw on ARANGO_DB and no access to _system drains (it used to ask _system)."""
    queue_create(payload=historical_payload, queue_id="least-privilege")
    result = mirror_drain()
    assert result.failed == 0 and not MirrorOutbox.objects.exists()
    assert_mirror_matches_postgres(mirror)


def test_it_is_ready_with_rights_on_its_own_database_only(mirror):
    """Case: readiness asks the mirror's database, not _system, so a least-privilege user is ready."""
    health.check_arango()


def test_it_creates_its_database_when_the_user_may(mirror_without_database, arango_server, mirror_user):
    """Case: the database does not exist and the user has rw on _system: the drain creates it, with access."""
    grant_user(arango_server.admin, mirror_user[0], "_system", "rw")
    health.check_arango()  # missing but creatable: ready
    make_queue(queue_id="creates-db", first_advance=False)  # one change pending: the queue
    assert mirror_drain().synced == 1
    assert arango_server.admin.has_database(mirror_without_database)
    assert "creates-db" in {doc["_key"] for doc in arango.all_documents(arango.connect(ensure=False), "queues")}


def test_it_says_when_the_user_may_not_create_its_database(mirror_without_database):
    """Case: the database does not exist and the user may not create it: said clearly, outbox kept."""
    make_queue(queue_id="cannot-create", first_advance=False)
    with pytest.raises(MirrorMisconfigured, match="may not create it"):
        mirror_drain()
    status = mirror_status()
    assert status["backlog"] == 1 and "may not create it" in status["last_error"]
    with pytest.raises(RuntimeError, match="may not create it"):
        health.check_arango()


def test_it_says_when_the_user_has_no_access_to_its_database(mirror, arango_server, mirror_user):
    """Case: the database exists but the user lost its rights: a configuration error naming the grant."""
    grant_user(arango_server.admin, mirror_user[0], mirror.db.name, "none")
    make_queue(first_advance=False)
    with pytest.raises(MirrorMisconfigured, match="grant rw"):
        mirror_drain()
    assert mirror_status()["backlog"] == 1
    with pytest.raises(RuntimeError, match="may not access"):
        health.check_arango()
