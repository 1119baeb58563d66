"""The arq side: worker settings, delivery, retry policy, signing, cron, heartbeats, operations."""
