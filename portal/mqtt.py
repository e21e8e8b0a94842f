"""The embedded MQTT broker (amqtt, MQTT 3.1.1) that tells data users about new products.

Clients log in as catalog data users. A user may subscribe to the topic filters in its
`mqtt_topics` and to the MQTT topics of every destination it reaches (policies included);
only admin users and the workers' publisher login (PUBLISHER_USER) publish.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action, BaseContext
from amqtt.errors import BrokerError
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from sqlalchemy import Engine

from ecpds.core import access
from ecpds.core.db import session_scope
from ecpds.core.errors import Unauthenticated
from ecpds.core.notifications import PUBLISHER_PURPOSE, PUBLISHER_USER
from ecpds.core.secrets import CredentialBox, load_or_create_key
from ecpds.core.settings import Settings
from ecpds.portal.access import login_password
from ecpds.portal.base import Portal, cannot_listen

log = logging.getLogger(__name__)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` (or, level by level, a narrower filter) falls under `topic_filter`."""
    wanted = topic.split("/")
    for index, level in enumerate(topic_filter.split("/")):
        if level == "#":
            return True
        if index >= len(wanted):
            return False
        if level == "+":
            if wanted[index] == "#":
                return False
            continue
        if level != wanted[index]:
            return False
    return len(wanted) == len(topic_filter.split("/"))


@dataclass(frozen=True)
class Grant:
    admin: bool
    topics: tuple[str, ...]

    def allows(self, topic: str, action: Action) -> bool:
        if self.admin:
            return True
        if action == Action.PUBLISH:
            return False
        return any(topic_matches(allowed, topic) for allowed in self.topics)


@dataclass
class Grants:
    """What each logged-in user may do, read from the catalog when it connects."""

    engine: Engine
    publisher_password: str  # the workers' login, PUBLISHER_USER: publishes anywhere
    by_user: dict[str, Grant] = field(default_factory=dict)

    def login(self, name: str, password: str) -> Grant | None:
        """Log in through the access layer; topics of every destination it reaches are granted."""
        if name == PUBLISHER_USER:  # reserved: never looked up among the data users
            if not hmac.compare_digest(password.encode(), self.publisher_password.encode()):
                return None
            grant = Grant(admin=True, topics=())
            self.by_user[name] = grant
            return grant
        try:
            principal = login_password(self.engine, name, password)
        except Unauthenticated:
            return None
        with session_scope(self.engine) as session:
            topics = access.topic_filters(session, principal)
        grant = Grant(admin=principal.admin, topics=topics)
        self.by_user[name] = grant
        return grant


class CatalogAuthPlugin(BaseAuthPlugin):
    """Accepts catalog data users with their portal password; refuses anonymous clients."""

    @dataclass
    class Config:
        grants: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.grants: Grants = self.config.grants

    async def authenticate(self, *, session: Session) -> bool | None:
        if not session.username or not session.password:
            return False
        grant = await asyncio.to_thread(self.grants.login, session.username, session.password)
        if grant is None:
            log.info("MQTT login refused for %r", session.username)
        return grant is not None


class CatalogTopicPlugin(BaseTopicPlugin):
    """Subscriptions and deliveries only within a user's topics; publishing for admins."""

    @dataclass
    class Config:
        grants: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.grants: Grants = self.config.grants

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if session is None or topic is None or action is None:
            return False
        grant = self.grants.by_user.get(session.username or "")
        return grant is not None and grant.allows(topic, action)


def broker_config(settings: Settings, grants: Grants) -> dict[str, Any]:
    return {
        "listeners": {
            "default": {"type": "tcp", "bind": f"{settings.bind}:{settings.mqtt_port}"},
        },
        "plugins": {
            "ecpds.portal.mqtt.CatalogAuthPlugin": {"grants": grants},
            "ecpds.portal.mqtt.CatalogTopicPlugin": {"grants": grants},
        },
    }


async def run_broker(
    settings: Settings, engine: Engine, stop: asyncio.Event, box: CredentialBox | None = None
) -> None:
    """Run the broker on settings.mqtt_port until `stop` is set.

    `box` (default: the one of settings.key_file) derives the workers' publisher password.
    """
    box = box or CredentialBox(load_or_create_key(settings.key_file))
    grants = Grants(engine, publisher_password=box.internal_password(PUBLISHER_PURPOSE))
    broker = Broker(broker_config(settings, grants))
    try:
        await broker.start()
    except (BrokerError, OSError) as exc:
        raise cannot_listen("MQTT", settings.bind, settings.mqtt_port, exc) from None
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


async def serve_mqtt(portal: Portal, stop: asyncio.Event) -> None:
    """The portal's MQTT server (one of ecpds.portal.server.SERVERS)."""
    await run_broker(portal.settings, portal.engine, stop, portal.box)
