"""The runtime: reconcile desired resources into running components."""

from headwater.runtime.reconciler import ApplyResult, Reconciler
from headwater.runtime.runtime import Runtime, UnresolvedDestination

__all__ = ["ApplyResult", "Reconciler", "Runtime", "UnresolvedDestination"]
