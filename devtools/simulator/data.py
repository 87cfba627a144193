"""Record flow without Kafka, for steps that neither load nor consume a data topic."""
from __future__ import annotations


class SimulatedData:
    """Loaders 'write' what they are asked, connectors keep pace."""

    def produce(self, count: int) -> int:
        return count

    def consume(self, pace: int) -> int:
        return pace

    def close(self) -> None:
        pass
