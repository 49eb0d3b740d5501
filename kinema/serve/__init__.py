"""``kinema serve``: an OpenAI-compatible ``/v1/videos`` job service with workers and a web page.

    config.py   ServeConfig: data folder, job store URL, models, limits
    db.py       one SQL interface over SQLite and PostgreSQL
    store.py    jobs and API keys: submit, claim (leases), finish, expire
    catalog.py  the models served, their sizes and durations; request -> Settings
    media.py    uploads in, video / thumbnail / spritesheet out, all addressed by job id
    wire.py     OpenAI-shaped errors, body limits, form reading, the Video object
    api.py      the HTTP routes (Starlette) and the page at /
    worker.py   the worker loop: claim, generate, write, finish
    run.py      the processes behind `kinema serve`, `serve api`, `serve worker`, `serve keys`
"""

from .config import ServeConfig

__all__ = ["ServeConfig"]
