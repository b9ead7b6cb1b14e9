// A little enhancement only: every page works without it.
(function () {
  "use strict";
  // Guess the reader's timezone for the sign-up form, if they have not chosen one.
  var zone = document.getElementById("timezone");
  if (zone && !zone.value && window.Intl) {
    try {
      var guess = Intl.DateTimeFormat().resolvedOptions().timeZone;
      for (var i = 0; i < zone.options.length; i++) {
        if (zone.options[i].value === guess) { zone.value = guess; break; }
      }
    } catch (e) { /* keep the newsletter's own */ }
  }
  // ALTCHA proof of work (when the site turns it on): solve the server's challenge
  // in the browser, so the form carries proof that work was done. No third party.
  var box = document.getElementById("altcha");
  if (!box || !window.crypto || !window.crypto.subtle) { return; }
  var form = box.closest("form"), status = document.getElementById("altcha-status");
  var button = form.querySelector("button[type=submit]");
  button.disabled = true;
  function hex(buffer) {
    return Array.prototype.map.call(new Uint8Array(buffer), function (b) {
      return ("0" + b.toString(16)).slice(-2);
    }).join("");
  }
  fetch(box.getAttribute("data-challenge"), { credentials: "same-origin" })
    .then(function (r) { return r.json(); })
    .then(async function (c) {
      var encoder = new TextEncoder();
      // The challenge names its upper bound "maxNumber" (ALTCHA's JSON).
      var max = c.maxNumber || c.maxnumber || 1000000;
      for (var n = 0; n <= max; n++) {
        var digest = await crypto.subtle.digest("SHA-256", encoder.encode(c.salt + n));
        if (hex(digest) === c.challenge) {
          document.getElementById("altcha-payload").value = btoa(JSON.stringify({
            algorithm: c.algorithm, challenge: c.challenge, number: n,
            salt: c.salt, signature: c.signature
          }));
          status.textContent = "Check done: you can sign up.";
          button.disabled = false;
          return;
        }
      }
      status.textContent = "The check did not finish; reload the page to try again.";
    })
    .catch(function () { status.textContent = "The check could not run; reload the page."; });
})();
