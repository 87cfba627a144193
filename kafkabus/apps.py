from django.apps import AppConfig


class KafkabusConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "kafkabus"
    verbose_name = "Kafka integration"
