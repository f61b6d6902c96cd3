"""NervesHub's user API under /api/ (docs/nerveshub-api.md): the paths, bodies and
answers NervesHub's own command-line tools speak, as thin adapters over the same
services as the hub's own API under /api/v1/."""
