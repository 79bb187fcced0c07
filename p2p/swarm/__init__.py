"""The download engine: a sans-IO scheduler and the asyncio driver that runs it."""
