from django.apps import AppConfig


class ConsumersConfig(AppConfig):
    """Entry point: the Kafka consumers of queue-control (commands) and queue-events (telemetry).

    Like the API and the console, they parse what comes in and call the orchestration's services;
    kafkabus below them is the transport (connection, consumer loop, publisher, dead letters).
    """

    name = "consumers"
    verbose_name = "Kafka consumers"
