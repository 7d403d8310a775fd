"""Webhook subscribers: any HTTP endpoint can follow the log, signed per Standard Webhooks.

Subscriptions are events on the `webhook` aggregate (judged by the intake like any command); the
dispatcher turns each subscription into a durable JetStream consumer and POSTs every matching
event as a CloudEvent, with retries driven by JetStream redelivery.
"""
