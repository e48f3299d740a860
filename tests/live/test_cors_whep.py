"""WHEP for any player: conformance to the WHEP draft (draft-ietf-wish-whep) point by point, CORS for players on
other origins, and a page served from another origin playing a session in headless Chromium (web security on).

The conformance points (each a named check below, all reported together when some fail):

- POST with a content type other than application/sdp: 4xx (415); a malformed SDP: 4xx (400);
- an accepted offer: 201, Content-Type application/sdp, a Location, an answer that is sendonly in every m-section
  and carries the server's candidates (it gathers them all before answering);
- the 201 carries a strong ETag and ``Accept-Patch: application/trickle-ice-sdpfrag`` (trickle ICE supported);
- OPTIONS: 2xx with ``Accept-Post: application/sdp`` on the endpoint; GET on endpoint and session: 2xx, no content;
- PATCH: another content type 415, a malformed fragment 400, no If-Match 428, a stale one 412, an ICE restart 422
  (trickle ICE is supported, ICE restarts are not); trickle candidates 204, no body, no ETag, and the candidates
  reach the server's ICE agent (the player's offer carried none);
- DELETE: 200 (an If-Match is ignored), then 404.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

SCRIPT_TIMEOUT_S = 120


def _strip_candidates(sdp: str) -> tuple[str, list[str], str, str]:
    """The offer without its candidates (a trickle ICE player's early offer), its candidate lines, ufrag, pwd."""
    lines = sdp.splitlines()
    cands = [ln for ln in lines if ln.startswith("a=candidate:")]
    kept = [ln for ln in lines if not ln.startswith("a=candidate:") and ln != "a=end-of-candidates"]
    ufrag = next(ln.split(":", 1)[1] for ln in lines if ln.startswith("a=ice-ufrag:"))
    pwd = next(ln.split(":", 1)[1] for ln in lines if ln.startswith("a=ice-pwd:"))
    return "\r\n".join(kept) + "\r\n", cands, ufrag, pwd


def test_whep_conformance_point_by_point_and_cors():
    from avatarcast.live.server import ServerConfig, run_server
    from avatarcast.live.outputs.whep import new_peer_connection

    checks: dict[str, bool] = {}
    details: dict[str, str] = {}

    def check(name: str, ok: bool, detail: object = "") -> None:
        checks[name] = bool(ok)
        if not ok:
            details[name] = str(detail)[:300]

    async def body():
        h = await run_server(ServerConfig(port=0, width=128, height=128, fps=25.0, token="admin"))
        pc = new_peer_connection()
        try:
            s = h.session()
            endpoint = f"{h.base_url}/v1/sessions/default/whep"
            vauth = {"Authorization": f"Bearer {s.viewer_token}"}
            player = "http://player.test:5173"
            async with aiohttp.ClientSession() as http:
                r = await http.post(endpoint, data="v=0", headers={**vauth, "Content-Type": "text/plain"})
                check("post_other_content_type_is_415", r.status == 415, r.status)
                r = await http.post(endpoint, data="hello", headers={**vauth, "Content-Type": "application/sdp"})
                check("post_malformed_sdp_is_400", r.status == 400, r.status)

                r = await http.options(endpoint)
                check("options_endpoint_is_2xx", 200 <= r.status < 300, r.status)
                check("options_endpoint_accept_post_sdp", r.headers.get("Accept-Post") == "application/sdp",
                      dict(r.headers))
                check("options_endpoint_allows_post", "POST" in r.headers.get("Allow", ""), dict(r.headers))
                r = await http.get(endpoint)
                check("get_endpoint_is_2xx_without_content", r.status == 204 and not await r.read(), r.status)

                # a trickle ICE player: the offer goes out with no candidates, they follow in a PATCH
                pc.addTransceiver("video", direction="recvonly")
                pc.addTransceiver("audio", direction="recvonly")
                got_track = asyncio.Event()
                pc.on("track", lambda track: got_track.set())
                await pc.setLocalDescription(await pc.createOffer())
                offer, cands, ufrag, pwd = _strip_candidates(pc.localDescription.sdp)
                r = await http.post(endpoint, data=offer,
                                    headers={**vauth, "Content-Type": "application/sdp", "Origin": player})
                answer = await r.text()
                check("post_offer_is_201", r.status == 201, f"{r.status} {answer[:200]}")
                check("answer_content_type_sdp", r.content_type == "application/sdp", r.content_type)
                location = r.headers.get("Location", "")
                check("location_names_the_session", re.fullmatch(r"/v1/sessions/default/whep/\w+", location),
                      location)
                sections = answer.split("m=")[1:]
                check("answer_sendonly_in_every_section",
                      sections and all("a=sendonly" in m for m in sections), answer[:300])
                check("answer_has_server_candidates", "a=candidate:" in answer, answer[:300])
                etag = r.headers.get("ETag", "")
                check("etag_in_201_strong", etag.startswith('"') and etag.endswith('"') and len(etag) > 2, etag)
                check("accept_patch_trickle_in_201",
                      r.headers.get("Accept-Patch") == "application/trickle-ice-sdpfrag", dict(r.headers))
                check("cors_allow_origin_on_201", r.headers.get("Access-Control-Allow-Origin") == player,
                      dict(r.headers))
                exposed = {x.strip() for x in r.headers.get("Access-Control-Expose-Headers", "").split(",")}
                check("cors_exposes_location_link_etag_content_type",
                      {"Location", "Link", "ETag", "Content-Type"} <= exposed, exposed)
                resource = f"{h.base_url}{location}"

                r = await http.options(resource)
                check("options_resource_accept_patch",
                      r.headers.get("Accept-Patch") == "application/trickle-ice-sdpfrag", dict(r.headers))
                r = await http.get(resource, headers=vauth)
                check("get_resource_is_2xx_without_content", r.status == 204 and not await r.read(), r.status)

                frag = "\r\n".join([f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", "m=audio 9 UDP/TLS/RTP/SAVPF 0",
                                    "a=mid:0", *cands, "a=end-of-candidates"]) + "\r\n"
                sdpfrag = {**vauth, "Content-Type": "application/trickle-ice-sdpfrag"}
                r = await http.patch(resource, data=frag, headers={**vauth, "Content-Type": "application/sdp",
                                                                   "If-Match": etag})
                check("patch_other_content_type_is_415", r.status == 415, r.status)
                r = await http.patch(resource, data="not sdp at all", headers={**sdpfrag, "If-Match": etag})
                check("patch_malformed_fragment_is_400", r.status == 400, r.status)
                r = await http.patch(resource, data=frag, headers=sdpfrag)
                check("patch_without_if_match_is_428", r.status == 428, r.status)
                r = await http.patch(resource, data=frag, headers={**sdpfrag, "If-Match": '"stale"'})
                check("patch_stale_etag_is_412", r.status == 412, r.status)
                restart = frag.replace(ufrag, "newU").replace(pwd, "newpasswordnewpassword12")
                r = await http.patch(resource, data=restart, headers={**sdpfrag, "If-Match": "*"})
                check("patch_ice_restart_unsupported_is_422", r.status == 422, r.status)

                r = await http.patch(resource, data=frag, headers={**sdpfrag, "If-Match": etag})
                check("patch_trickle_is_204", r.status == 204, f"{r.status} {await r.text()}")
                check("patch_trickle_no_body_no_etag", not await r.read() and "ETag" not in r.headers,
                      dict(r.headers))
                viewer = s.viewers[location.rsplit("/", 1)[1]]
                ice = viewer.pc.getTransceivers()[0].receiver.transport.transport
                ports = {c.port for c in ice.getRemoteCandidates()}
                sent_ports = {int(c.split()[5]) for c in cands}
                check("patch_candidates_reach_the_ice_agent", sent_ports and sent_ports <= ports,
                      (sent_ports, ports))

                await pc.setRemoteDescription(__import__("aiortc").RTCSessionDescription(sdp=answer, type="answer"))
                try:
                    await asyncio.wait_for(got_track.wait(), 10)
                    deadline = time.monotonic() + 10
                    while pc.connectionState != "connected" and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                except asyncio.TimeoutError:
                    pass
                check("trickled_session_connects", pc.connectionState == "connected", pc.connectionState)

                r = await http.delete(resource, headers={**vauth, "If-Match": '"anything"'})
                check("delete_is_200_ignoring_if_match", r.status == 200, r.status)
                r = await http.delete(resource, headers=vauth)
                check("delete_again_is_404", r.status == 404, r.status)

                # CORS: preflights answered for WHEP from any origin, refused for the admin API by default
                pre = {"Origin": player, "Access-Control-Request-Method": "POST",
                       "Access-Control-Request-Headers": "authorization,content-type"}
                r = await http.options(endpoint, headers=pre)
                allow_h = {x.strip().lower() for x in r.headers.get("Access-Control-Allow-Headers", "").split(",")}
                check("cors_preflight_whep_any_origin", r.status == 204 and
                      r.headers.get("Access-Control-Allow-Origin") == player and
                      "POST" in r.headers.get("Access-Control-Allow-Methods", ""), (r.status, dict(r.headers)))
                check("cors_allows_authorization_content_type_if_match",
                      {"authorization", "content-type", "if-match"} <= allow_h, allow_h)
                r = await http.options(resource, headers={**pre, "Access-Control-Request-Method": "PATCH"})
                check("cors_preflight_whep_resource_patch_delete",
                      r.status == 204 and {"PATCH", "DELETE"} <= {m.strip() for m in r.headers.get(
                          "Access-Control-Allow-Methods", "").split(",")}, dict(r.headers))
                r = await http.options(f"{h.base_url}/v1/sessions", headers=pre)
                check("cors_admin_api_preflight_refused_by_default",
                      r.status == 403 and "Access-Control-Allow-Origin" not in r.headers, r.status)
                r = await http.get(f"{h.base_url}/v1/sessions", headers={"Authorization": "Bearer admin",
                                                                         "Origin": player})
                check("cors_admin_api_no_allow_origin_by_default",
                      r.status == 200 and "Access-Control-Allow-Origin" not in r.headers, dict(r.headers))
                r = await http.get(f"{h.base_url}/v1/sessions/default/stats", headers={**vauth, "Origin": player})
                check("cors_stats_readable_from_any_origin",
                      r.headers.get("Access-Control-Allow-Origin") == player, dict(r.headers))
        finally:
            await pc.close()
            await h.close()

        # --cors-origin: only the origins listed, for viewing and admin endpoints alike
        h = await run_server(ServerConfig(port=0, width=128, height=128, fps=25.0, token="admin",
                                          default_session=False, cors_origins=("https://studio.example",)))
        try:
            async with aiohttp.ClientSession() as http:
                def pre(origin: str) -> dict:
                    return {"Origin": origin, "Access-Control-Request-Method": "POST"}
                r = await http.options(f"{h.base_url}/v1/sessions", headers=pre("https://studio.example"))
                check("cors_configured_origin_reaches_admin_api",
                      r.status == 204 and r.headers.get("Access-Control-Allow-Origin") == "https://studio.example",
                      r.status)
                r = await http.options(f"{h.base_url}/v1/sessions/x/whep", headers=pre("https://other.example"))
                check("cors_configured_origins_restrict_whep", r.status == 403, r.status)
        finally:
            await h.close()

    asyncio.run(asyncio.wait_for(body(), 90))
    failed = [name for name, ok in checks.items() if not ok]
    print(json.dumps(checks, indent=1))
    assert not failed, {name: details.get(name) for name in failed}
    assert len(checks) >= 30


def test_returned_urls_use_the_public_url_behind_a_load_balancer():
    """Every URL the API returns (view, ingest, WHEP, stats, the WHEP Location) names the configured public URL,
    never the address the request came to: with one public URL per server, a client's later requests reach the
    server that holds the session (docs/scaling.md)."""
    from avatarcast.live.server import ServerConfig, run_server
    from avatarcast.live.outputs.whep import new_peer_connection

    public = "https://avatar-3.example.com"

    async def body():
        h = await run_server(ServerConfig(port=0, width=128, height=128, token="admin", public_url=public))
        pc = new_peer_connection()
        try:
            async with aiohttp.ClientSession() as http:
                r = await http.post(f"{h.base_url}/v1/sessions", headers={"Authorization": "Bearer admin"},
                                    json={"size": "128x128"})
                created = await r.json()
                urls = created["urls"]
                assert urls["ingest"].startswith("wss://avatar-3.example.com/v1/sessions/"), urls
                for name in ("view", "whep", "stats"):
                    assert urls[name].startswith(f"{public}/"), urls
                r = await http.get(f"{h.base_url}/v1/sessions", headers={"Authorization": "Bearer admin",
                                                                         "Host": "evil.example"})
                assert all(s["urls"]["whep"].startswith(public) for s in (await r.json())["sessions"])
                pc.addTransceiver("video", direction="recvonly")
                await pc.setLocalDescription(await pc.createOffer())
                r = await http.post(f"{h.base_url}/v1/sessions/{created['id']}/whep", data=pc.localDescription.sdp,
                                    headers={"Authorization": f"Bearer {created['viewer_token']}",
                                             "Content-Type": "application/sdp", "Host": "evil.example"})
                assert r.status == 201
                assert r.headers["Location"].startswith(f"{public}/v1/sessions/{created['id']}/whep/"), r.headers
        finally:
            await pc.close()
            await h.close()

    asyncio.run(asyncio.wait_for(body(), 60))


# ---------------------------------------------------------------------------------------------- browser

PLAYER_PAGE = """<!doctype html>
<html><body><video id="v" autoplay muted playsinline></video>
<script>
window.result = { frames: 0 };
async function play(whepUrl, token) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const video = document.getElementById("v");
  pc.ontrack = (e) => { if (!video.srcObject) video.srcObject = e.streams[0] || new MediaStream([e.track]);
                        else video.srcObject.addTrack(e.track); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((ok) => {
    if (pc.iceGatheringState === "complete") return ok();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && ok();
    setTimeout(ok, 3000);
  });
  const res = await fetch(whepUrl, { method: "POST", body: pc.localDescription.sdp,
    headers: { "Content-Type": "application/sdp", "Authorization": "Bearer " + token } });
  const r = window.result;
  r.status = res.status;
  r.location = res.headers.get("Location");
  r.etag = res.headers.get("ETag");
  r.acceptPatch = res.headers.get("Accept-Patch");
  r.contentType = res.headers.get("Content-Type");
  await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  const step = () => { r.frames++; video.requestVideoFrameCallback(step); };
  video.requestVideoFrameCallback(step);
  window.pc = pc;
  window.resource = new URL(r.location, whepUrl).href;
  window.token = token;
}
async function framesDecoded() {
  let n = 0;
  (await window.pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") n += s.framesDecoded || 0; });
  return n;
}
async function stop() {
  const res = await fetch(window.resource, { method: "DELETE",
    headers: { "Authorization": "Bearer " + window.token } });
  window.pc.close();
  return res.status;
}
// a trickle ICE player: the offer goes out at once, the candidates follow in one PATCH after the 201
async function playTrickle(whepUrl, token) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  const t = window.trickle = { frames: 0 };
  const cands = [];
  let done = false;
  pc.onicecandidate = (e) => { if (e.candidate) cands.push(e.candidate); else done = true; };
  await pc.setLocalDescription(await pc.createOffer());
  const offer = pc.localDescription.sdp;
  t.offerCandidates = (offer.match(/a=candidate:/g) || []).length;
  const res = await fetch(whepUrl, { method: "POST", body: offer,
    headers: { "Content-Type": "application/sdp", "Authorization": "Bearer " + token } });
  t.status = res.status;
  const resource = new URL(res.headers.get("Location"), whepUrl).href;
  const etag = res.headers.get("ETag");
  await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  for (let i = 0; i < 60 && !done; i++) await new Promise((ok) => setTimeout(ok, 50));
  const m = offer.match(/a=ice-ufrag:(.*)\\r\\n[\\s\\S]*?a=ice-pwd:(.*)\\r\\n/);
  const lines = ["a=ice-ufrag:" + m[1], "a=ice-pwd:" + m[2], "m=audio 9 UDP/TLS/RTP/SAVPF 0", "a=mid:0"];
  for (const c of cands) if (c.sdpMid === "0") lines.push("a=" + c.candidate);
  lines.push("a=end-of-candidates");
  t.patchedCandidates = lines.filter((l) => l.startsWith("a=candidate:")).length;
  t.gathered = cands.map((c) => [c.sdpMid, c.candidate]); t.gatheringDone = done;
  const p = await fetch(resource, { method: "PATCH", body: lines.join("\\r\\n") + "\\r\\n",
    headers: { "Content-Type": "application/trickle-ice-sdpfrag", "If-Match": etag,
               "Authorization": "Bearer " + token } });
  t.patchStatus = p.status;
  const video = document.createElement("video");
  video.muted = true; video.autoplay = true;
  document.body.appendChild(video);
  const stream = new MediaStream(pc.getReceivers().map((r) => r.track));
  video.srcObject = stream;
  const step = () => { t.frames++; video.requestVideoFrameCallback(step); };
  video.requestVideoFrameCallback(step);
  window.trickleResource = resource;
  window.tricklePc = pc;
}
async function tryAdmin(url, token) {
  try { await fetch(url, { headers: { "Authorization": "Bearer " + token } }); return "allowed"; }
  catch (e) { return "blocked"; }
}
</script></body></html>
"""


def _unavailable() -> str | None:
    """Why this machine cannot run the browser test (no Chromium, Playwright or network namespace), or None."""
    from avatarcast_bench.browser import browser_unavailable

    return browser_unavailable()


def test_player_page_from_another_origin_plays_a_session_over_whep_in_chromium(tmp_path: Path) -> None:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "result.json"
    script = f'ip link set lo up && exec "{sys.executable}" "{Path(__file__).resolve()}" "{out}"'
    proc = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0 and out.exists(), \
        f"browser script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    r = json.loads(out.read_text())
    print(json.dumps(r))
    assert r["page_origin"] != r["engine_origin"], r
    assert r["status"] == 201, r
    # the headers a player needs are readable across origins (CORS exposes them)
    assert r["location"] and r["location"].startswith("/v1/sessions/default/whep/"), r
    assert r["etag"] and r["acceptPatch"] == "application/trickle-ice-sdpfrag", r
    assert r["contentType"].split(";")[0].strip() == "application/sdp", r
    # it plays: frames decoded and presented, at a sensible rate
    assert r["framesDecoded"] >= 25 and r["presented"] >= 20, r
    assert r["fps"] > 10.0, r
    assert r["delete_status"] == 200 and r["viewers_after"] == 0, r
    # a trickle ICE player: offer at once, candidates in a PATCH (a cross-origin request with If-Match, so its
    # preflight must allow that header). In the loopback-only namespace Chromium gathers no host candidate of its
    # own (it reaches the server's candidate and is seen as peer-reflexive), so the PATCH carries only
    # end-of-candidates; candidates through PATCH are checked with aiortc in the conformance test above.
    t = r["trickle"]
    assert t["status"] == 201 and t["offerCandidates"] == 0 and t["gatheringDone"], t
    assert t["patchStatus"] == 204, t
    assert t["frames"] >= 10 and t["connection"] == "connected", t
    # the admin API stays closed to that page (no CORS for it by default)
    assert r["admin_from_page"] == "blocked", r


async def _browser_session(out_path: Path) -> dict:
    from aiohttp import web

    from avatarcast_bench.browser import CHROMIUM_ARGS, CHROMIUM_PATH
    from avatarcast.live.server import ServerConfig, run_server
    from playwright.async_api import async_playwright

    handle = await run_server(ServerConfig(host="127.0.0.1", port=0, width=256, height=256, token="admin"))
    page_app = web.Application()
    page_app.router.add_get("/", lambda request: web.Response(text=PLAYER_PAGE, content_type="text/html"))
    page_runner = web.AppRunner(page_app)
    await page_runner.setup()
    site = web.TCPSite(page_runner, "127.0.0.1", 0)
    await site.start()
    page_port = page_runner.addresses[0][1]
    result: dict = {"page_origin": f"http://127.0.0.1:{page_port}", "engine_origin": handle.base_url}
    pw_cm = async_playwright()
    pw = await pw_cm.__aenter__()
    browser = await pw.chromium.launch(executable_path=CHROMIUM_PATH, headless=True, args=list(CHROMIUM_ARGS))
    try:
        page = await (await browser.new_context()).new_page()
        await page.goto(f"http://127.0.0.1:{page_port}/")
        session = handle.session()
        await page.evaluate("([u, t]) => play(u, t)", [f"{handle.base_url}/v1/sessions/default/whep",
                                                     session.viewer_token])
        result.update(await page.evaluate("() => window.result"))
        deadline = time.monotonic() + 15
        while await page.evaluate("() => framesDecoded()") < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        f0, p0, t0 = await page.evaluate("() => framesDecoded()"), await page.evaluate("() => window.result.frames"), \
            time.monotonic()
        await asyncio.sleep(2.0)
        f1, p1, t1 = await page.evaluate("() => framesDecoded()"), await page.evaluate("() => window.result.frames"), \
            time.monotonic()
        result.update(framesDecoded=f1, presented=p1, fps=(f1 - f0) / (t1 - t0), presented_fps=(p1 - p0) / (t1 - t0))
        result["delete_status"] = await page.evaluate("() => stop()")
        await asyncio.sleep(0.2)
        result["viewers_after"] = len(session.viewers)
        await page.evaluate("([u, t]) => playTrickle(u, t)", [f"{handle.base_url}/v1/sessions/default/whep",
                                                              session.viewer_token])
        deadline = time.monotonic() + 15
        while await page.evaluate("() => window.trickle.frames") < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        result["trickle"] = await page.evaluate("() => window.trickle")
        result["trickle"]["connection"] = await page.evaluate("() => window.tricklePc.connectionState")
        result["admin_from_page"] = await page.evaluate("([u, t]) => tryAdmin(u, t)",
                                                        [f"{handle.base_url}/v1/sessions", handle.admin_token])
    finally:
        await browser.close()
        await pw_cm.__aexit__(None, None, None)
        await page_runner.cleanup()
        await handle.close()
    out_path.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    t0 = time.monotonic()
    res = asyncio.run(asyncio.wait_for(_browser_session(Path(sys.argv[1])), SCRIPT_TIMEOUT_S - 10))
    print(json.dumps(res), f"({time.monotonic() - t0:.1f} s)")
