# The image rayservice.yaml runs on every Ray node: Ray's own image, plus the model and the files ray_app.py imports.
#
#   docker build -f lessons/09-throughput/ray.Dockerfile -t serving-course-ray:1.0.0 .     # from the repository root
#
# Ray's version and Python must be the same on every node and in the RayService (rayVersion): 2.60.0, Python 3.11,
# as tools/ray/requirements.txt pins them for the local run.
FROM rayproject/ray:2.60.0-py311

# scikit-learn as the model was trained with (models/iris.json); fastapi_offline because lesson 02's app.py imports it.
RUN pip install --no-cache-dir scikit-learn==1.9.1 joblib==1.6.0 fastapi_offline==1.7.7

COPY course/ /app/course/
COPY models/iris.joblib models/iris.json /app/models/
COPY lessons/02-fastapi/app.py /app/lessons/02-fastapi/
COPY lessons/09-throughput/ray_app.py /app/lessons/09-throughput/
# /app: `course` (and, through it, the model and lesson 02); the lesson folder: `import ray_app` (the import_path).
ENV PYTHONPATH=/app:/app/lessons/09-throughput
