"""Sources: where events come from (PingSource; MQTT sources land with their issue)."""

from headwater.sources.ping import PingSchedule, PingSourceRunner

__all__ = ["PingSchedule", "PingSourceRunner"]
