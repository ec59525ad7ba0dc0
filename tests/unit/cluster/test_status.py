"""A resource's status over the mesh: counters summed, the rest chosen."""

from __future__ import annotations

from headwater.cluster.status import merge_statuses


def test_counters_add_up_and_lag_and_settings_do_not() -> None:
    merged = merge_statuses(
        {
            "n1": {
                "delivered": 3,
                "lag": 5,
                "maxInflight": 100,
                "ordering": "unordered",
                "latencySeconds": {"buckets": {"0.1": 2, "+Inf": 3}, "count": 3, "sum": 0.5},
            },
            "n2": {
                "delivered": 4,
                "lag": 7,
                "maxInflight": 100,
                "ordering": "unordered",
                "latencySeconds": {"buckets": {"0.1": 1, "+Inf": 4}, "count": 4, "sum": 1.0},
            },
        }
    )
    assert merged["delivered"] == 7
    assert merged["lag"] == 7
    assert merged["maxInflight"] == 100
    assert merged["ordering"] == "unordered"
    assert merged["latencySeconds"] == {"buckets": {"0.1": 3, "+Inf": 7}, "count": 7, "sum": 1.5}


def test_the_last_error_is_the_most_recent_of_all_nodes() -> None:
    merged = merge_statuses(
        {
            "n1": {
                "lastError": "old",
                "lastErrorTime": "2026-01-01T00:00:00+00:00",
                "lastErrorAttempt": 1,
            },
            "n2": {
                "lastError": "new",
                "lastErrorTime": "2026-01-02T00:00:00+00:00",
                "lastErrorAttempt": 3,
            },
            "n3": {"lastError": None, "lastErrorTime": None, "lastErrorAttempt": None},
        }
    )
    assert (merged["lastError"], merged["lastErrorAttempt"]) == ("new", 3)


def test_a_leased_component_names_the_node_that_runs_it() -> None:
    merged = merge_statuses({"n1": {"activeNode": "n2"}, "n2": {"activeNode": "n2", "sent": 4}})
    assert merged == {"sent": 4, "activeNode": "n2"}
