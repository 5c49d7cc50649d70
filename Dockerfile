# The image for the web server and the workers (docker-compose.yml). CUDA wheels of torch
# run on CPU too, so one image serves both.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/clip-microscope
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY precompute precompute
COPY store store
COPY workers workers
COPY app app
COPY cli cli
COPY templates templates
COPY static static
COPY alembic alembic
RUN pip install --no-cache-dir -c constraints.txt .
ENV MICROSCOPE_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
CMD ["microscope", "serve", "--host", "0.0.0.0", "--port", "8000"]
