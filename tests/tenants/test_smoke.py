def test_health_reports_postgres_and_redis_up(client, db):
    response = client.get("/api/health")
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "healthy"
    assert body["checks"]["postgres"]["status"] == "up"
    assert body["checks"]["redis"]["status"] == "up"
