"""The web console: static pages and a JSON API over the Controller servicer (aiohttp)."""
