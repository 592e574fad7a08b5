"""The three gRPC clients the gateway talks through, and their health checks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from easel.auth.v1 import auth_pb2_grpc
from easel.gallery.v1 import gallery_pb2_grpc
from easel.inference.v1 import inference_pb2_grpc
from services.common.grpc_client import channel

from .settings import GatewaySettings

BACKENDS = ("auth", "gallery", "inference")


@dataclass
class Clients:
    auth: auth_pb2_grpc.AuthAsyncStub
    gallery: gallery_pb2_grpc.GalleryAsyncStub
    inference: inference_pb2_grpc.InferenceAsyncStub
    channels: dict[str, grpc.aio.Channel]

    async def health(self, wait_s: float) -> dict[str, str]:
        """Each backend's standard health status name (SERVING, NOT_SERVING, UNAVAILABLE, ...)."""

        async def check(name: str) -> str:
            stub = health_pb2_grpc.HealthStub(self.channels[name])
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=wait_s)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

        results = await asyncio.gather(*(check(name) for name in BACKENDS))
        return dict(zip(BACKENDS, results, strict=True))

    async def close(self) -> None:
        await asyncio.gather(*(ch.close() for ch in self.channels.values()))


CLIENTS = web.AppKey("clients", Clients)


def open_clients(settings: GatewaySettings) -> Clients:
    timeout = settings.rpc_timeout_s
    channels = {
        "auth": channel(settings.auth_target, "auth", timeout),
        "gallery": channel(settings.gallery_target, "gallery", timeout),
        "inference": channel(settings.inference_target, "inference", timeout),
    }
    return Clients(
        auth=cast("auth_pb2_grpc.AuthAsyncStub", auth_pb2_grpc.AuthStub(channels["auth"])),
        gallery=cast("gallery_pb2_grpc.GalleryAsyncStub", gallery_pb2_grpc.GalleryStub(channels["gallery"])),
        inference=cast(
            "inference_pb2_grpc.InferenceAsyncStub", inference_pb2_grpc.InferenceStub(channels["inference"])
        ),
        channels=channels,
    )
