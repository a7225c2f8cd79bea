from pipewarden.cli import main

raise SystemExit(main())
