"""Path parameters the dashboard's routes share. A job's id has a shape of its own, so
`/jobs/{job_id:job_id}` never takes a page such as `/jobs/new`, whatever order the routers
are included in."""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class JobIdConvertor(Convertor[str]):
    regex = "job_[0-9A-Za-z]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("job_id", JobIdConvertor())

#: The job's page; its fragments and actions are below it.
JOB = "/jobs/{job_id:job_id}"
