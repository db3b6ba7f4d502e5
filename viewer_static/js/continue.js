// The link's landing: the code is in the session cookie now. Go on to "/" by a navigation
// that starts on this site, so the SameSite=Strict cookie travels (it does not on the
// cross-site click from a mail or QR app), and drop "?code=" from the history.
window.location.replace("/");
