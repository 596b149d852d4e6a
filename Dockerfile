# cloudamqp-autopilot: one image for the receiver and the worker.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY receiver ./receiver
COPY worker ./worker
COPY shared ./shared
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 LOG_FORMAT=json
COPY --from=build /install /usr/local
RUN groupadd --system --gid 10001 autopilot \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --create-home autopilot \
    && mkdir -p /app/var && chown autopilot:autopilot /app/var
WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# The receiver by default; the worker service runs `python -m worker`.
CMD ["python", "-m", "receiver"]
