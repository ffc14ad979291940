"""`python -m actwatch`: the `actwatch` command."""

from actwatch.cli import main

raise SystemExit(main())
