from celery import shared_task


@shared_task
def queue_advance(queue_pk: int) -> None:
    pass


@shared_task
def step_stop_task(step_pk: int) -> None:
    pass


@shared_task
def reconcile() -> None:
    pass
