from ptrain.moe.cli import main

raise SystemExit(main())
