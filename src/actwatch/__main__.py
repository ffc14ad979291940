from actwatch.cli import main

raise SystemExit(main())
