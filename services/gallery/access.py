"""Who may see and change an image. The gallery enforces this itself from the request's Actor."""

from __future__ import annotations

from dataclasses import dataclass

from easel.common.v1 import common_pb2
from services.common import limits
from services.common.errors import EaselError, forbidden, not_found, unauthenticated

VISIBILITIES = limits.VISIBILITIES


@dataclass(frozen=True)
class Viewer:
    user_id: str
    username: str
    is_admin: bool

    @classmethod
    def of(cls, actor: common_pb2.Actor) -> Viewer:
        user_id = actor.user_id.strip()
        # A role without a user is not an admin: anonymous callers carry no role.
        return cls(user_id, actor.username, bool(user_id) and actor.role == "admin")

    @property
    def signed_in(self) -> bool:
        return bool(self.user_id)

    def owns(self, owner_id: str) -> bool:
        return self.signed_in and self.user_id == owner_id


def can_view(viewer: Viewer, owner_id: str, visibility: str, hidden: bool, has_share_token: bool) -> bool:
    """Private: owner and admins. Unlisted: also whoever holds a live share token. Public: everyone,
    anonymous callers too. Hidden by a moderator: owner and admins only."""
    if viewer.owns(owner_id) or viewer.is_admin:
        return True
    if hidden:
        return False
    if visibility == "public":
        return True
    return visibility == "unlisted" and has_share_token


def can_change(viewer: Viewer, owner_id: str) -> bool:
    return viewer.owns(owner_id) or viewer.is_admin


def image_not_found() -> EaselError:
    # The same answer for a missing image and one the caller may not see: ids leak nothing.
    return not_found(
        "image_not_found",
        "No such image, or it is not shared with you; check the link or ask its owner to share it.",
    )


def not_image_owner() -> EaselError:
    return forbidden("not_image_owner", "Only the owner of this image can change, share or delete it.")


def sign_in_required(what: str) -> EaselError:
    return unauthenticated("sign_in_required", f"Sign in to {what}.")


def admin_required() -> EaselError:
    return forbidden("admin_required", "Only an administrator can do this; ask one of them.")
