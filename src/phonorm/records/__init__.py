"""Types of the artifact files that one stage writes and stages above it read (the writer, every
reader, `validate` and the report use the same class). Below every stage package: imports only
`artifacts`, `errors` and pydantic.
"""
