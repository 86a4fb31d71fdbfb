// Signing in, where the stage's API takes a Cognito user pool's ID token (AUTH=cognito,
// chalice_app/auth.py): the hosted UI's authorization-code flow with PKCE, as a public client (no
// secret can be kept in a page). The tokens stay in this tab's sessionStorage; the ID token goes
// with every API call as `Authorization`, and is refreshed before it expires. On other stages
// (none, iam) nothing happens here. GET sign-in says which, and where the hosted UI is.
const STORE = "image-pipeline-console";
const EARLY_MS = 60_000; // refresh this long before the ID token expires
let settings = { mode: "none" };
let session = null; // { id_token, refresh_token, expires_at, email }

const redirectUri = () => `${location.origin}${location.pathname}`;
const saved = (key) => JSON.parse(sessionStorage.getItem(`${STORE}:${key}`) || "null");
const save = (key, value) => (value === null ? sessionStorage.removeItem(`${STORE}:${key}`)
  : sessionStorage.setItem(`${STORE}:${key}`, JSON.stringify(value)));

function base64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const randomString = () => base64url(crypto.getRandomValues(new Uint8Array(32)));

function claims(token) {
  const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(payload));
}

async function tokenRequest(fields) {
  const response = await fetch(settings.token_url, {
    method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ client_id: settings.client_id, ...fields }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error_description || body.error || `the token endpoint answered ${response.status}`);
  return body;
}

function keep(tokens, refreshToken) {
  const { exp, email } = claims(tokens.id_token);
  session = { id_token: tokens.id_token, refresh_token: tokens.refresh_token || refreshToken,
    expires_at: exp * 1000, email };
  save("session", session);
}

// To the hosted UI; it comes back to this page with ?code=...&state=...
async function redirectToSignIn() {
  const verifier = randomString();
  const state = randomString();
  save("pending", { verifier, state, hash: location.hash });
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const query = new URLSearchParams({ response_type: "code", client_id: settings.client_id,
    redirect_uri: redirectUri(), scope: settings.scopes, state, code_challenge: challenge,
    code_challenge_method: "S256" });
  location.assign(`${settings.authorize_url}?${query}`);
  return new Promise(() => {}); // the page is leaving
}

async function finishSignIn(query) {
  const pending = saved("pending");
  save("pending", null);
  history.replaceState(null, "", `${location.pathname}${(pending && pending.hash) || ""}`);
  if (query.get("error")) throw new Error(`sign-in refused: ${query.get("error_description") || query.get("error")}`);
  if (!pending || pending.state !== query.get("state")) throw new Error("sign-in answer not asked for by this tab");
  keep(await tokenRequest({ grant_type: "authorization_code", code: query.get("code"),
    redirect_uri: redirectUri(), code_verifier: pending.verifier }));
}

let refreshing = null; // one refresh for the calls that find the token expiring together
async function fresh() {
  if (session && session.expires_at - EARLY_MS > Date.now()) return true;
  if (!session || !session.refresh_token) return false;
  const refreshToken = session.refresh_token;
  refreshing ??= tokenRequest({ grant_type: "refresh_token", refresh_token: refreshToken })
    .then((tokens) => { keep(tokens, refreshToken); return true; }, () => false)
    .finally(() => { refreshing = null; });
  return refreshing;
}

// Resolves with who is signed in ({ mode, email }), after a round trip through the hosted UI if
// need be; rejects with the reason when sign-in failed.
export async function signIn() {
  const response = await fetch("sign-in");
  if (!response.ok) throw new Error(`GET sign-in answered ${response.status}`);
  settings = await response.json();
  if (settings.mode !== "cognito") return { mode: settings.mode };
  const query = new URLSearchParams(location.search);
  if (query.has("code") || query.has("error")) await finishSignIn(query);
  else session = saved("session");
  if (!(await fresh())) return redirectToSignIn();
  return { mode: settings.mode, email: session.email };
}

// The headers an API call carries (none where the stage needs no token).
export async function authorization() {
  if (settings.mode !== "cognito") return {};
  if (!(await fresh())) return redirectToSignIn();
  return { Authorization: session.id_token };
}

// The API refused the token (revoked, or the user removed): sign in again.
export function signInAgain() {
  session = null;
  save("session", null);
  return redirectToSignIn();
}

export function signOut() {
  session = null;
  save("session", null);
  const query = new URLSearchParams({ client_id: settings.client_id, logout_uri: redirectUri() });
  location.assign(`${settings.logout_url}?${query}`);
}
