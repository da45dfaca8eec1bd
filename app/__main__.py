"""``python -m app``: run the service with uvicorn, configured from the settings."""

from __future__ import annotations

import uvicorn
from pydantic import ValidationError

from app.observability import uvicorn_log_config
from app.settings import describe_settings_error, get_settings


def main() -> None:
    try:
        settings = get_settings()
    except ValidationError as error:
        # One line per invalid variable, named as it is set, instead of a traceback.
        raise SystemExit(describe_settings_error(error)) from None
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=uvicorn_log_config(settings.log_format),
    )


if __name__ == "__main__":
    main()
