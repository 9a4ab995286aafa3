# The MLflow tracking server of mlflow.yaml: MLflow with its basic-auth app, the PostgreSQL driver
# for the backend store and boto3 for the S3 artifact store (the official MLflow image has
# neither driver). It needs no files from the repository:
#   docker build -f cluster/kubernetes/mlflow.Dockerfile -t registry.example.com/metasweep/mlflow:3.17.2 cluster/kubernetes
#   docker push registry.example.com/metasweep/mlflow:3.17.2
# Keep MLFLOW_VERSION, the tag and mlflow.yaml's image in step; a server older than the clients'
# MLflow (metasweep installs mlflow>=3.0) may refuse their requests.
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2

RUN pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" psycopg2-binary boto3 \
    && useradd --create-home --uid 1000 mlflow

USER 1000
ENTRYPOINT ["mlflow"]
