"""Only what differs between frameworks, behind one interface (`Backend`, base.py):
torch (torch.py) and MLX (mlx.py). A third framework is one more module and one more
line in `backend_for`."""

from mathrl.backends.base import Backend, Encoded, MicroStats, RLPass
from mathrl.backends.torch import TorchBackend
from mathrl.config import Config


def backend_for(cfg: Config | str) -> Backend:
    """The configured backend (cfg.backend, or its name), a fresh one per run; an MLX one
    first checks that the configured variants have an MLX form."""
    name = cfg if isinstance(cfg, str) else cfg.backend
    if name == "mlx":
        # imported only here: a torch-only process must never import mlx (its first
        # import also loads a BLAS through mathrl.mlx_blas's hook)
        from mathrl.backends.mlx import MlxBackend

        return MlxBackend(None if isinstance(cfg, str) else cfg)
    return TorchBackend()


def check_mlx_forms(cfg: Config) -> None:
    """A variant registered in torch form only (a user's own loss) stops an MLX run,
    naming the key, before any work."""
    # imported here: only MLX runs call this, and a torch-only process never loads mlx
    from mathrl.backends.mlx import check_forms

    check_forms(cfg)


__all__ = [
    "Backend",
    "Encoded",
    "MicroStats",
    "RLPass",
    "TorchBackend",
    "backend_for",
    "check_mlx_forms",
]
