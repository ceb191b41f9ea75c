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
from server.files import FileStore
from server.keys import TokenSigner, load_token_signer, load_webhook_key
from server.maintenance import Maintenance
from server.registry import Registry
from server.store import JobStore
from server.store.sqlite import SqliteJobStore
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
    files: FileStore
    fetcher: UrlFetcher
    keys: KeyRing
    tokens: TokenSigner
    webhook_signer: WebhookSigner
    pool: WorkerPool
    dispatcher: WebhookDispatcher
    maintenance: Maintenance

    @classmethod
    def start(cls, settings: Settings, registry: Registry) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(settings.cpu_threads)
        store = SqliteJobStore(
            settings.database_path, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts
        )
        files = FileStore(settings.files_dir, settings.base_url)
        fetcher = UrlFetcher(
            FetchPolicy(
                allow_private=settings.allow_private_urls,
                total_timeout=settings.download_timeout_seconds,
                max_bytes=settings.max_download_bytes,
            )
        )
        webhook_signer = WebhookSigner(load_webhook_key(settings.data_dir))
        weights = WeightsStore(settings.weights_store_dir, WeightsLock.load(settings.weights_lock))
        devices = resolve_devices(settings.device)
        pool = WorkerPool(
            devices,
            instance_id=uuid.uuid4().hex[:12],
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
            tokens=load_token_signer(settings.data_dir),
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
        )
        pool.start()
        services.dispatcher.start()
        services.maintenance.start()
        logger.info("Kiln is serving at %s on %s", settings.base_url, ", ".join(map(str, devices)))
        return services

    def stop(self) -> None:
        """Stops every thread that uses the store, waiting for each, then closes the store."""
        self.maintenance.stop()
        self.dispatcher.stop()
        self.pool.stop()
        self.fetcher.close()
        self.store.close()


def warm_endpoints(registry: Registry, endpoint_ids: tuple[str, ...]) -> list[type[Pipeline]]:
    """The pipeline classes of `--warm`; an id this server does not serve stops the start."""
    unknown = [endpoint_id for endpoint_id in endpoint_ids if registry.get(endpoint_id) is None]
    if unknown:
        raise ValueError(f"--warm names endpoint(s) this server does not serve: {', '.join(unknown)}")
    return [registry.get(endpoint_id) for endpoint_id in endpoint_ids]
