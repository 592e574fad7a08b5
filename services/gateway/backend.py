"""Every gRPC call the gateway makes, as one typed async method each.

This is the only place that talks to auth, gallery and inference, and the only place a failed call
is translated: an `AioRpcError` becomes the `EaselError` the callee meant (its code, field and
sentence from the trailing metadata), or `<service>_unavailable` / `<service>_timeout` when the
service could not answer. The faces (REST, the compatible APIs, the pages) see Easel errors only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any, Literal, TypeVar

import grpc

from easel.auth.v1 import auth_pb2
from easel.common.v1 import common_pb2
from easel.gallery.v1 import gallery_pb2
from easel.inference.v1 import inference_pb2
from services.common.errors import from_rpc_error

from .clients import Clients

R = TypeVar("R")
Service = Literal["auth", "gallery", "inference"]
Actor = common_pb2.Actor


async def answer(service: Service, call: Awaitable[R]) -> R:
    """The reply of a unary call, or the Easel error it failed with."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, service) from None


async def stream(service: Service, start: Callable[[], Any]) -> AsyncGenerator[Any, None]:
    """The messages of a server stream started by `start()` when the first one is asked for; a
    failure part-way is the Easel error it failed with. The call is cancelled when the reader stops
    early (close the iterator, or leave `contextlib.aclosing`)."""
    call = start()
    try:
        async for item in call:
            yield item
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, service) from None
    finally:
        call.cancel()


class Backend:
    """Typed calls over the three services' stubs (deadlines are set by the channels' interceptors)."""

    def __init__(self, clients: Clients) -> None:
        self.clients = clients
        self._auth = clients.auth
        self._gallery = clients.gallery
        self._inference = clients.inference

    async def health(self, wait_s: float) -> dict[str, str]:
        return await self.clients.health(wait_s)

    # --- auth -------------------------------------------------------------------------------------

    async def authenticate(self, token: str) -> auth_pb2.Principal:
        return await answer("auth", self._auth.Authenticate(auth_pb2.AuthenticateRequest(token=token)))

    async def register(self, username: str, email: str, password: str, address: str) -> auth_pb2.User:
        req = auth_pb2.RegisterRequest(
            username=username, email=email, password=password, client_address=address
        )
        created: auth_pb2.RegisterResponse = await answer("auth", self._auth.Register(req))
        return created.user

    async def login(self, username: str, password: str, address: str) -> auth_pb2.LoginResponse:
        req = auth_pb2.LoginRequest(username=username, password=password, client_address=address)
        return await answer("auth", self._auth.Login(req))

    async def logout(self, token: str) -> None:
        await answer("auth", self._auth.Logout(auth_pb2.LogoutRequest(token=token)))

    async def get_user(self, user_id: str) -> auth_pb2.User:
        return await answer("auth", self._auth.GetUser(auth_pb2.GetUserRequest(user_id=user_id)))

    async def change_password(
        self, user_id: str, current: str, new: str, keep_session: str, client_address: str
    ) -> None:
        req = auth_pb2.ChangePasswordRequest(
            user_id=user_id,
            current_password=current,
            new_password=new,
            keep_session_token=keep_session,
            client_address=client_address,
        )
        await answer("auth", self._auth.ChangePassword(req))

    async def create_api_key(
        self, user_id: str, name: str, scopes: Iterable[str], ttl_seconds: int
    ) -> auth_pb2.CreateApiKeyResponse:
        req = auth_pb2.CreateApiKeyRequest(
            user_id=user_id, name=name, scopes=list(scopes), ttl_seconds=ttl_seconds
        )
        return await answer("auth", self._auth.CreateApiKey(req))

    async def list_api_keys(self, user_id: str) -> list[auth_pb2.ApiKey]:
        found = await answer("auth", self._auth.ListApiKeys(auth_pb2.ListApiKeysRequest(user_id=user_id)))
        return list(found.keys)

    async def revoke_api_key(self, user_id: str, key_id: str) -> None:
        await answer(
            "auth", self._auth.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(user_id=user_id, key_id=key_id))
        )

    # --- inference --------------------------------------------------------------------------------

    async def submit_job(
        self,
        actor: Actor,
        kind: str,
        model: str,
        params: inference_pb2.GenerationParams,
        idempotency_key: str = "",
    ) -> inference_pb2.Job:
        req = inference_pb2.SubmitJobRequest(
            actor=actor, kind=kind, model=model, params=params, idempotency_key=idempotency_key
        )
        return await answer("inference", self._inference.SubmitJob(req))

    async def get_job(self, actor: Actor, job_id: str) -> inference_pb2.Job:
        return await answer(
            "inference", self._inference.GetJob(inference_pb2.GetJobRequest(actor=actor, job_id=job_id))
        )

    async def cancel_job(self, actor: Actor, job_id: str) -> inference_pb2.Job:
        req = inference_pb2.CancelJobRequest(actor=actor, job_id=job_id)
        return await answer("inference", self._inference.CancelJob(req))

    async def list_jobs(self, actor: Actor, limit: int, cursor: str = "") -> inference_pb2.ListJobsResponse:
        req = inference_pb2.ListJobsRequest(actor=actor, limit=limit, cursor=cursor)
        return await answer("inference", self._inference.ListJobs(req))

    async def list_models(self) -> list[inference_pb2.ModelInfo]:
        found = await answer("inference", self._inference.ListModels(inference_pb2.ListModelsRequest()))
        return list(found.models)

    def watch_job(self, actor: Actor, job_id: str) -> AsyncGenerator[inference_pb2.JobEvent, None]:
        """The job's events from now on (and what it missed), until the stream ends."""
        req = inference_pb2.WatchJobRequest(actor=actor, job_id=job_id)
        return stream("inference", lambda: self._inference.WatchJob(req))

    # --- gallery ----------------------------------------------------------------------------------

    async def get_image(self, actor: Actor, image_id: str, share_token: str = "") -> gallery_pb2.Image:
        req = gallery_pb2.GetImageRequest(actor=actor, image_id=image_id, share_token=share_token)
        return await answer("gallery", self._gallery.GetImage(req))

    async def list_images(
        self, actor: Actor, limit: int, cursor: str = "", kind: str = ""
    ) -> gallery_pb2.ListImagesResponse:
        """The actor's images, newest first; `kind` "generated" leaves out uploads (edit inputs)."""
        req = gallery_pb2.ListImagesRequest(actor=actor, limit=limit, cursor=cursor, kind=kind)
        return await answer("gallery", self._gallery.ListImages(req))

    async def list_public(
        self, actor: Actor, order: str, limit: int, cursor: str = ""
    ) -> gallery_pb2.ListImagesResponse:
        req = gallery_pb2.ListPublicRequest(actor=actor, order=order, limit=limit, cursor=cursor)
        return await answer("gallery", self._gallery.ListPublic(req))

    async def search(
        self, actor: Actor, query: str, limit: int, cursor: str, only_mine: bool
    ) -> gallery_pb2.ListImagesResponse:
        req = gallery_pb2.SearchRequest(
            actor=actor, query=query, limit=limit, cursor=cursor, only_mine=only_mine
        )
        return await answer("gallery", self._gallery.Search(req))

    async def update_image(self, update: gallery_pb2.UpdateImageRequest) -> gallery_pb2.Image:
        return await answer("gallery", self._gallery.UpdateImage(update))

    async def delete_image(self, actor: Actor, image_id: str) -> None:
        await answer(
            "gallery",
            self._gallery.DeleteImage(gallery_pb2.DeleteImageRequest(actor=actor, image_id=image_id)),
        )

    async def like(self, actor: Actor, image_id: str, liked: bool) -> gallery_pb2.Image:
        req = gallery_pb2.LikeRequest(actor=actor, image_id=image_id)
        return await answer("gallery", (self._gallery.Like if liked else self._gallery.Unlike)(req))

    async def report(self, actor: Actor, image_id: str, reason: str) -> None:
        req = gallery_pb2.ReportRequest(actor=actor, image_id=image_id, reason=reason)
        await answer("gallery", self._gallery.Report(req))

    async def hide(self, actor: Actor, image_id: str, hidden: bool) -> gallery_pb2.Image:
        req = gallery_pb2.HideRequest(actor=actor, image_id=image_id, hidden=hidden)
        return await answer("gallery", self._gallery.Hide(req))

    async def create_share_link(self, actor: Actor, image_id: str) -> gallery_pb2.ShareLink:
        req = gallery_pb2.CreateShareLinkRequest(actor=actor, image_id=image_id)
        return await answer("gallery", self._gallery.CreateShareLink(req))

    async def revoke_share_links(self, actor: Actor, image_id: str, token: str = "") -> None:
        req = gallery_pb2.RevokeShareLinkRequest(actor=actor, image_id=image_id, token=token)
        await answer("gallery", self._gallery.RevokeShareLink(req))

    async def resolve_share_link(self, token: str) -> gallery_pb2.Image:
        req = gallery_pb2.ResolveShareLinkRequest(token=token)
        return await answer("gallery", self._gallery.ResolveShareLink(req))

    async def upload_image(
        self, actor: Actor, data: bytes, filename: str, purpose: str, deadline_s: float
    ) -> gallery_pb2.Image:
        req = gallery_pb2.UploadImageRequest(actor=actor, data=data, filename=filename, purpose=purpose)
        return await answer("gallery", self._gallery.UploadImage(req, timeout=deadline_s))

    def image_chunks(
        self, actor: Actor, image_id: str, size: str, share_token: str, deadline_s: float
    ) -> AsyncGenerator[gallery_pb2.ImageChunk, None]:
        """The image's bytes in chunks; the first one carries the content type, size and ETag."""
        req = gallery_pb2.ReadImageRequest(actor=actor, image_id=image_id, size=size, share_token=share_token)
        return stream("gallery", lambda: self._gallery.ReadImage(req, timeout=deadline_s))

    async def read_image(self, actor: Actor, image_id: str, deadline_s: float) -> bytes:
        data = bytearray()
        async with contextlib.aclosing(
            self.image_chunks(actor, image_id, "original", "", deadline_s)
        ) as chunks:
            async for chunk in chunks:
                data.extend(chunk.data)
        return bytes(data)


__all__ = ["Backend", "answer", "stream"]
