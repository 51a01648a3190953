"""`python -m sparsenet.reporting PATH...` is `sparsenet-report PATH...`."""

from sparsenet.reporting.cli import main

raise SystemExit(main())
