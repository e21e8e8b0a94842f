# The ecpds image: one binary, many sub-commands (`portal`, `worker --role ...`,
# `temporal setup`), as infra/compose.yaml and infra/k8s run it.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY . /src
RUN pip install /src && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/lib/ecpds --create-home ecpds

USER 10001
WORKDIR /var/lib/ecpds
# Inside a container every door and metrics port listens on all interfaces; state
# that is not in PostgreSQL or the object store stays in the home volume.
ENV ECPDS_HOME=/var/lib/ecpds \
    ECPDS_BIND=0.0.0.0

EXPOSE 4443 4080 4021 4022 4883 4884 4885 9464 9465
ENTRYPOINT ["ecpds"]
CMD ["portal"]
