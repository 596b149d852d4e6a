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
RUN useradd --system --uid 10001 --home-dir /app --create-home autopilot \
    && mkdir -p /app/var && chown autopilot /app/var
WORKDIR /app
USER autopilot
EXPOSE 8080
# The receiver by default; the worker service runs `python -m worker`.
CMD ["python", "-m", "receiver"]
