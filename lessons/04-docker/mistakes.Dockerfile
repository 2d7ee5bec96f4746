# A Dockerfile that works, and that you should never ship. Exercise: fix it (see the notebook).
FROM python:latest
WORKDIR /app
COPY . .
RUN pip install -r requirements.txt
ENV HOST=0.0.0.0 PORT=8000
ENV API_TOKEN=tok_live_3f9a8c1d2e7b
EXPOSE 8000
CMD python lessons/02-fastapi/app.py
