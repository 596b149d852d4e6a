"""The receiver: the CloudAMQP webhook, durable hand-off to RabbitMQ, read-only views."""
