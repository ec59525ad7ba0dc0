"""The runtime: reconcile desired resources into running components."""

from headwater.runtime.context import Context, UnresolvedDestination
from headwater.runtime.reconciler import ApplyResult, Reconciler
from headwater.runtime.runtime import Runtime

__all__ = ["ApplyResult", "Context", "Reconciler", "Runtime", "UnresolvedDestination"]
