"""One worker process: SMTP listeners, spool writer, delivery scheduler, HTTP.

The worker's tasks are supervised: if the spool writer or a scheduler loop
dies, the worker logs why and exits, and the parent starts a new one (its
leased rows return to the queue when their leases expire).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from typing import TYPE_CHECKING

from mta import db, metrics
from mta.api import http
from mta.api.app import build_app
from mta.api.context import ApiContext
from mta.auth.throttle import AuthThrottle
from mta.config import Config
from mta.delivery.agent import DeliveryAgent
from mta.delivery.connections import ConnectionCache
from mta.dkim import DkimSigner
from mta.dkim_rotation import DkimActivator, DkimKeyReloader
from mta.gdpr.retention import RetentionTask
from mta.message_audit import MessageAuditor
from mta.inbound.check import InboundChecker
from mta.delivery.mta_sts import MtaSts
from mta.delivery.resolve import Resolver
from mta.delivery.sites import Sites
from mta.delivery.smtp import ClientSettings, SmtpDeliverer
from mta.delivery.sources import source_addresses
from mta.delivery.tls_policy import TlsPolicies
from mta.delivery.tlsrpt import TlsSessionCounter
from mta.delivery.tlsrpt_send import TlsReporter, report_settings
from mta.delivery.warmup import Warmup
from mta.smtp import listener
from mta.smtp.hooks import BeforeQueueChecks
from mta.smtp.session import Services
from mta.smtp.tls import ServerTls
from mta.spool.enqueue import Spool
from mta.spool.housekeeping import Housekeeper
from mta.spool.scheduler import Scheduler
from mta.spool.settle import Settler
from mta.storage.bodies import BodyCodec
from mta.storage.keyring import Keyring
from mta.storage.factory import build_store
from mta.storage.sweep import StoreSweeper
from mta.webhooks.dispatcher import WebhookDispatcher
from mta.webhooks.outbox import Outbox

if TYPE_CHECKING:
    from mta.server import Prepared

log = logging.getLogger("mta.worker")


class Worker:
    def __init__(self, config: Config, prepared: "Prepared", index: int, node_id: str):
        self.config = config
        self.prepared = prepared
        self.index = index
        self.node_id = node_id

    async def run(self) -> None:
        config = self.config
        delivery = config.delivery
        pool = await db.create_pool(self.prepared.url, config)
        store = build_store(config)
        await store.start()
        keyring = Keyring(pool, self.prepared.master_keys, config.storage.data_key_cache_size,
                          config.storage.data_key_cache_seconds)
        bodies = BodyCodec(keyring)

        resolver = Resolver(delivery.nameservers, delivery.dns_port, config.route_table(), delivery.smtp_port,
                            dnssec=delivery.tls.dane)
        connections = ConnectionCache(delivery.connection_cache_seconds, delivery.connection_reuse_limit)
        smtp = SmtpDeliverer(ClientSettings(
            sources=source_addresses(config),
            connect_timeout=delivery.connect_timeout,
            data_timeout=delivery.data_timeout), connections,
            TlsPolicies(delivery.tls.default, delivery.tls.policy, delivery.tls.ca_file),
            dane_resolver=resolver.dns if delivery.tls.dane else None)

        # Without endpoints there is no outbox, and the writers skip the webhook step.
        outbox = Outbox(config.webhooks.endpoints) if config.webhooks.endpoints else None
        sites = Sites(pool, delivery.sites)
        housekeeper = Housekeeper(pool, self.node_id, delivery.history_days, config.smtp.auth_failure_window)
        sweeper = StoreSweeper(self.prepared.url, store, config.storage.sweep_interval,
                               config.storage.sweep_min_age) if config.storage.sweep_interval else None
        auditor = MessageAuditor(pool, config.data_path(config.logging.pseudonym_key_file), config.audit.interval,
                                 config.audit.batch_size)
        retention = RetentionTask(pool, store, config.retention)
        scheduler = Scheduler(pool, self.prepared.url, self.node_id, delivery.concurrency, delivery.lease_seconds,
                              delivery.poll_interval, execute=self._deliver, busy_sites=sites.busy_keys)
        spool = Spool(pool, store, bodies, config.storage.inline_max_size, self.node_id, delivery.lease_seconds, on_ready=scheduler.submit,
                      outbox=outbox)
        settler = Settler(pool, spool, self.node_id, config.server.hostname, delivery.retry_schedule,
                          delivery.max_age, delivery.delay_notice_after, outbox=outbox)
        webhooks = [WebhookDispatcher(self.prepared.url, config.webhooks, self.prepared.webhook_secrets, self.node_id)] \
            if outbox is not None else []
        mta_sts = MtaSts(pool, resolver.dns, delivery.tls.ca_file, delivery.mta_sts.port) \
            if delivery.mta_sts.enabled else None
        warmup = Warmup(pool, delivery.warmup.schedule, delivery.warmup.addresses) if delivery.warmup.addresses else None
        self.agent = DeliveryAgent(config, pool, store, bodies, resolver, smtp, settler, sites, mta_sts, warmup)
        signer = DkimSigner(self.prepared.dkim_keys)
        dkim_tasks = [DkimKeyReloader(pool, self.prepared.master_keys, signer, config.domains.dkim_reload_interval,
                                      self.prepared.dkim_keys)]
        if self.index == 0:
            dkim_tasks.append(DkimActivator(pool, config))
        reports = delivery.tls_reports
        if reports.enabled:
            smtp.reports = TlsSessionCounter(pool, reports.flush_seconds)
            reporter = TlsReporter(pool, resolver.dns, spool, signer, report_settings(config), delivery.tls.ca_file)

        spool.start()
        settler.start()
        sites.start()
        housekeeper.start()
        auditor.start()
        if sweeper is not None:
            sweeper.start()
        retention.start()
        for dkim_task in dkim_tasks:
            dkim_task.start()
        connections.start()
        scheduler.start()
        for dispatcher in webhooks:
            dispatcher.start()
        if reports.enabled:
            smtp.reports.start()
            reporter.start()
        inbound = InboundChecker(config.inbound, config.server.hostname, delivery.nameservers, delivery.dns_port)
        checks = BeforeQueueChecks(config.smtp.checks)
        services = Services(config, pool, spool, signer, AuthThrottle(pool, config.smtp),
                            inbound, checks)
        servers = await self._start_listeners(services)
        api = ApiContext(config, pool, store, bodies, spool, signer, checks)
        api.readiness.listeners_up = True
        http_server = None
        if self.index == 0 and "http" in self.prepared.sockets:
            http_server = await http.serve(build_app(api), self.prepared.sockets["http"])
        log.info("worker %d started as node %s", self.index, self.node_id)

        await self._wait_for_stop(spool.tasks + settler.tasks + scheduler.tasks + sites.tasks + housekeeper.tasks
                                  + auditor.tasks + (sweeper.tasks if sweeper is not None else [])
                                  + retention.tasks + [task for dkim_task in dkim_tasks for task in dkim_task.tasks]
                                  + [task for dispatcher in webhooks for task in dispatcher.tasks])

        log.info("worker %d stopping: no new sessions, finishing work in flight", self.index)
        api.readiness.listeners_up = False
        for server in servers:
            server.close()
        await asyncio.sleep(0)
        # The settle writer stops inside, after the last attempt and before the leases are released.
        await scheduler.stop(grace=delivery.stop_grace, settle_handed_over=settler.stop)
        await connections.close()
        if reports.enabled:
            await reporter.stop()
            await smtp.reports.stop()
        await sites.stop()
        await housekeeper.stop()
        await retention.stop()
        for dkim_task in dkim_tasks:
            await dkim_task.stop()
        await auditor.stop()
        if sweeper is not None:
            await sweeper.stop()
        await spool.stop()
        # A POST cut short here is sent again once its lease ends, by this node or another.
        for dispatcher in webhooks:
            await dispatcher.stop()
        if http_server is not None:
            await http_server.stop()
        await checks.close()
        await store.close()
        await pool.close()
        log.info("worker %d stopped", self.index)

    def _reload_tls(self) -> None:
        try:
            self.tls.reload()
        except (OSError, ssl.SSLError, ValueError) as error:
            log.error("TLS reload failed, the certificates in use stay: %r", error)
            return
        log.info("TLS certificates reloaded: default and %d SNI name(s)", len(self.tls.files_by_name))
        self._record_expiries()

    def _record_expiries(self) -> None:
        for name, expiry in self.tls.expiries().items():
            metrics.TLS_CERTIFICATE_EXPIRY.labels(name=name).set(expiry.timestamp())

    async def _deliver(self, job, slot) -> None:
        await self.agent.run(job, slot)

    async def _start_listeners(self, services: Services) -> list[asyncio.base_events.Server]:
        self.tls = ServerTls.from_config(self.config.tls, self.prepared.cert_file, self.prepared.key_file)
        self._record_expiries()
        tls_context = self.tls.context
        servers = []
        for name, kind in (("mx", listener.MX), ("submission", listener.SUBMISSION),
                           ("submissions", listener.SUBMISSIONS)):
            sock = self.prepared.sockets.get(name)
            if sock is not None:
                servers.append(await listener.serve(kind, sock, services, tls_context))
        return servers

    async def _wait_for_stop(self, watched: list[asyncio.Task]) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_tls)

        stop_task = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stop_task, *watched], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stop_task:
                log.critical("task %s ended unexpectedly: %r", task.get_name(), task.exception())
                raise SystemExit(1)
