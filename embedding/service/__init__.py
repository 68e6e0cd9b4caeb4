"""`embedding serve`: the hosted API's routes, search, thumbnails and the search page, on Ray Serve.

app             the application builder (`build`, for Serve config files) and `start`/`stop`
haproxy         HAProxy (Serve's high-throughput mode): its private folder, error files, timeout, clean-up
ingress         the FastAPI ingress: every route
wire            the hosted API's wire format (api-version, model-version, the error envelope)
search_request  the body of POST /retrieval:search, checked
body            request bodies under the byte limit (in whatever serves HTTP, and in the ingress)
security        API keys and the source policy of every URL the service fetches
calls           how the ingress calls the other deployments: deadlines, retries, errors, batches
encoders        the encoder deployment (one per model version, a batch per call)
searcher        the search deployment (one per model version); live_index, the index it holds
thumbnails      thumbnails of indexed images, cached under <output.root>/_cache/
page/           the search page's static files (no CDN, no build step)
"""
