"""The running parts of one Kiln server, started and stopped together by the app's lifespan."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import torch

from pipelines.contract import Pipeline
from server.auth import KeyRing
from server.config import Settings
from server.context import MediaIO
from server.fetch import FetchPolicy, UrlFetcher
from server.host_memory import retain_freed_memory
from server.storage import FileStorage, open_file_store
from server.keys import TokenSigner, shared_token_signer, shared_webhook_key
from server.maintenance import Maintenance
from server.nodes import NodeHeartbeat
from server.registry import Registry
from server.store import JobStore, open_store
from server.webhooks import WebhookDispatcher, WebhookSigner
from server.weights import WeightsLock, WeightsStore
from server.worker import WorkerPool, resolve_devices

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    registry: Registry
    weights: WeightsStore
    store: JobStore
    files: FileStorage
    fetcher: UrlFetcher
    keys: KeyRing
    tokens: TokenSigner
    webhook_signer: WebhookSigner
    pool: WorkerPool
    dispatcher: WebhookDispatcher
    maintenance: Maintenance
    node: NodeHeartbeat

    @classmethod
    def start(cls, settings: Settings, registry: Registry) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(settings.cpu_threads)
        retain_freed_memory()
        store = open_store(
            settings.queue,
            data_dir=settings.data_dir,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            affinity_seconds=settings.affinity_seconds,
        )
        files = open_file_store(settings.storage_location, settings.base_url)
        fetcher = UrlFetcher(
            FetchPolicy(
                allow_private=settings.allow_private_urls,
                total_timeout=settings.download_timeout_seconds,
                max_bytes=settings.max_download_bytes,
            )
        )
        webhook_signer = WebhookSigner(shared_webhook_key(store))
        weights = WeightsStore(settings.weights_store_dir, WeightsLock.load(settings.weights_lock))
        devices = resolve_devices(settings.device) if settings.run_workers else []
        node_id = uuid.uuid4().hex[:12]
        pool = WorkerPool(
            devices,
            instance_id=node_id,
            store=store,
            registry=registry,
            weights=weights,
            settings=settings.pipeline_settings,
            media=MediaIO(
                fetcher=fetcher,
                files=files,
                max_image_pixels=settings.max_image_pixels,
                memory_budget_bytes=settings.memory_budget_bytes,
                base_url=settings.base_url,
            ),
            max_batch_size=settings.max_batch_size,
            heartbeat_seconds=settings.heartbeat_seconds,
            warm=warm_endpoints(registry, settings.warm_endpoints),
        )
        services = cls(
            settings=settings,
            registry=registry,
            weights=weights,
            store=store,
            files=files,
            fetcher=fetcher,
            keys=KeyRing(settings.api_keys),
            tokens=shared_token_signer(store),
            webhook_signer=webhook_signer,
            pool=pool,
            dispatcher=WebhookDispatcher(
                store,
                fetcher,
                webhook_signer,
                max_attempts=settings.webhook_max_attempts,
                first_retry_seconds=settings.webhook_first_retry_seconds,
                timeout_seconds=settings.webhook_timeout_seconds,
            ),
            maintenance=Maintenance(
                store, files, interval_seconds=settings.janitor_seconds, retention_seconds=settings.retention_seconds
            ),
            node=NodeHeartbeat(
                store,
                pool,
                node_id=node_id,
                role=node_role(settings),
                url=settings.base_url if settings.run_webhooks else None,
                interval=settings.heartbeat_seconds,
            ),
        )
        pool.start()
        if settings.run_webhooks:
            services.dispatcher.start()
        services.maintenance.start()
        services.node.start()
        logger.info(
            "Kiln %s (node %s, queue %s) at %s on %s",
            node_role(settings),
            node_id,
            "sqlite" if settings.queue in ("", "sqlite") else "shared",
            settings.base_url,
            ", ".join(map(str, devices)) or "no devices",
        )
        return services

    def stop(self) -> None:
        """Stops every thread that uses the store, waiting for each, then closes the store."""
        self.maintenance.stop()
        self.dispatcher.stop()
        self.pool.stop()
        self.node.stop()
        self.fetcher.close()
        self.store.close()


def node_role(settings: Settings) -> str:
    """`serve` (the API and workers), `api` (`serve --no-workers`) or `worker` (`kiln worker`)."""
    if not settings.run_webhooks:
        return "worker"
    return "serve" if settings.run_workers else "api"


def warm_endpoints(registry: Registry, endpoint_ids: tuple[str, ...]) -> list[type[Pipeline]]:
    """The pipeline classes of `--warm`; an id this server does not serve stops the start."""
    unknown = [endpoint_id for endpoint_id in endpoint_ids if registry.get(endpoint_id) is None]
    if unknown:
        raise ValueError(f"--warm names endpoint(s) this server does not serve: {', '.join(unknown)}")
    return [registry.get(endpoint_id) for endpoint_id in endpoint_ids]
