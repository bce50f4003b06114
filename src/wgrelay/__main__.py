from wgrelay.cli import main

raise SystemExit(main())
